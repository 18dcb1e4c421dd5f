"""`lisegagr eval PRED GT`: how well a segmentation maps the fields (`lisegagr_core.evaluation`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from lisegagr.cli import app
from lisegagr.options import OUT, fail, out, renamed_options
from lisegagr_core.errors import LisegagrError


@app.command("eval", cls=renamed_options(output="-o/--out"))
def eval_command(
    prediction: Annotated[
        Path, typer.Argument(help="A label raster, or a `segment` or `run` output folder.")
    ],
    truth: Annotated[
        Path,
        typer.Argument(help="Label raster, or polygons (VIA, LabelMe, GeoJSON, GeoParquet, GPKG)."),
    ],
    output: Annotated[
        Path | None,
        typer.Option(
            *OUT, help="Folder eval.json and the pictures go to (default: PREDICTION's eval/)."
        ),
    ] = None,
    iou_thresh: Annotated[float, typer.Option(help="IoU of a matched field.")] = 0.5,
) -> None:
    """Score a segmentation against ground truth: pixel IoU, object P/R/F1, merges, splits."""
    from lisegagr_core.evaluation import evaluate

    target = output or (prediction if prediction.is_dir() else prediction.parent) / "eval"
    try:
        report = evaluate(prediction, truth, target, iou_thresh=iou_thresh)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    table = Table(
        "image / stage",
        "pixel IoU",
        "P",
        "R",
        "F1",
        "mIoU",
        "true",
        "pred",
        "merged",
        "split",
        caption="P, R, F1: objects matched one-to-one at IoU ≥ "
        f"{iou_thresh:g}; mIoU: mean IoU of matched objects",
    )
    rows = [(image.name, image.overall.scores) for image in report.images]
    if len(report.images) > 1:
        rows.append(("all images", report.pooled))
    rows.extend((label, scores) for label, scores in report.pooled_stages.items())
    for name, scores in rows:
        ratios = (
            scores.pixel_iou,
            scores.precision,
            scores.recall,
            scores.f1,
            scores.matched_mean_iou,
        )
        counts = (
            scores.true_fields,
            scores.predicted_instances,
            scores.merged_fields,
            scores.split_fields,
        )
        table.add_row(name, *(f"{v:.3f}" for v in ratios), *(str(c) for c in counts))
    out.print(table)
    out.print(
        f"{target / 'eval.json'}; pictures: red missed, blue false, yellow merged, green matched",
        soft_wrap=True,
    )
