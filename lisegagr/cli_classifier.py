"""`lisegagr classifier build-dataset | train | eval`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from lisegagr.cli import _engine_setup, app
from lisegagr.options import (
    OUT,
    ConfigOption,
    DeviceOption,
    ModelOption,
    PointsOption,
    RichProgress,
    WeightsDir,
    fail,
    out,
    progress_bars,
    renamed_options,
    say,
)
from lisegagr_core.errors import LisegagrError
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR

classifier_app = typer.Typer(
    no_args_is_help=True,
    help="The field / non-field classifier: build a crop dataset, train, evaluate.",
)
app.add_typer(classifier_app, name="classifier")

NEGATIVE_SOURCES = ("superpixels", "sam", "sam+superpixels", "none")
BACKBONES = ("resnet50", "resnet18")
SCHEDULES = ("constant", "cosine")


@classifier_app.command("build-dataset", cls=renamed_options(output="-o/--out"))
def build_dataset(
    annotations: Annotated[
        list[Path],
        typer.Argument(
            help="Labelled polygons: VIA / LabelMe JSON, GeoJSON, GeoParquet, GPKG, or folders."
        ),
    ],
    output: Annotated[Path, typer.Option(*OUT, help="Folder the crop dataset goes to.")],
    negatives: Annotated[
        str,
        typer.Option(
            help="Non-field examples besides polygons labelled 0: superpixels (SLIC pieces of "
            "the unlabelled area, cheap), sam (instances of the engine, needs a model), "
            "sam+superpixels (the engine's, then SLIC pieces of what it left) or none."
        ),
    ] = "superpixels",
    raster: Annotated[
        Path | None, typer.Option(help="Georeferenced raster that map polygons lie on.")
    ] = None,
    test_fraction: Annotated[float, typer.Option(help="Share of images held out.")] = 0.2,
    seed: int = 0,
    crop_size: Annotated[int, typer.Option(help="Side of the crops (px).")] = 224,
    max_negatives_per_image: Annotated[int | None, typer.Option()] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace crops already in OUTPUT.")] = False,
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    config: ConfigOption = None,
    points_per_side: PointsOption = None,
) -> None:
    """Cut labelled polygons (label 1 field, 0 not) into an ImageFolder of crops, split by image."""
    from lisegagr_core.classify import (
        CombinedNegatives,
        EngineNegatives,
        SuperpixelNegatives,
        build_crop_dataset,
    )
    from lisegagr_core.classify.dataset import NegativeSource

    if negatives not in NEGATIVE_SOURCES:
        raise fail(f"--negatives must be one of {', '.join(NEGATIVE_SOURCES)}, not {negatives!r}.")
    if not 0.0 <= test_fraction < 1.0:
        raise fail(f"--test-fraction must be at least 0 and below 1, not {test_fraction}.")
    source: NegativeSource | None = None
    try:
        if negatives == "superpixels":
            source = SuperpixelNegatives()
        elif negatives in ("sam", "sam+superpixels"):
            overrides: dict[str, Any] = {}
            if points_per_side is not None:
                overrides["amg.points_per_side"] = points_per_side
            mask_source, engine_config, described = _engine_setup(
                model, weights_dir, device, config, overrides
            )
            say("model:", described)
            source = EngineNegatives(mask_source, engine_config)
            if negatives == "sam+superpixels":
                source = CombinedNegatives(source, SuperpixelNegatives())
        with progress_bars("current", remaining=False) as progress:
            task = progress.add_task("images", total=None, current="")

            def on_image(name: str, written: dict[str, int], total: int) -> None:
                counts = ", ".join(f"{v} {k}" for k, v in written.items())
                progress.update(task, total=total, advance=1, current=f"{name}: {counts}")

            report = build_crop_dataset(
                annotations,
                output,
                source,
                raster=raster,
                test_fraction=test_fraction,
                seed=seed,
                crop_size=crop_size,
                max_negatives_per_image=max_negatives_per_image,
                overwrite=overwrite,
                on_image=on_image,
            )
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    table = Table("split", "images", "field crops", "nonfield crops")
    for split, counts in report.counts.items():
        table.add_row(
            split, str(len(report.images[split])), str(counts["field"]), str(counts["nonfield"])
        )
    out.print(table)
    out.print(f"negatives: {report.negatives or 'polygons labelled 0 only'}", soft_wrap=True)
    out.print(f"crops in {output}/ (see {output / 'dataset.json'})", soft_wrap=True)


@classifier_app.command("train", cls=renamed_options(output="-o/--out"))
def train(
    data: Annotated[Path, typer.Argument(help="Crop dataset (train|test/field|nonfield).")],
    output: Annotated[Path, typer.Option(*OUT, help="The classifier file to write.")],
    backbone: Annotated[str, typer.Option(help="resnet50 (the paper's) or resnet18.")] = "resnet50",
    imagenet_weights: Annotated[
        Path | None, typer.Option(help="torchvision ImageNet state dict of the backbone.")
    ] = None,
    input_size: Annotated[
        int, typer.Option(min=32, max=1024, help="Crop side the model sees (px).")
    ] = 224,
    epochs: Annotated[int, typer.Option(min=1)] = 10,
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    lr: Annotated[float, typer.Option(help="SGD learning rate (paper: 1e-4).")] = 1e-4,
    momentum: float = 0.9,
    weight_decay: Annotated[float, typer.Option(help="SGD weight decay (paper: 0.1).")] = 0.1,
    schedule: Annotated[
        str, typer.Option(help="constant (the paper's) or cosine decay of the learning rate.")
    ] = "constant",
    augment: Annotated[bool, typer.Option(help="Random flips and quarter turns.")] = False,
    seed: int = 0,
    workers: Annotated[int, typer.Option(help="DataLoader worker processes.")] = 0,
    device: DeviceOption = None,
    half: Annotated[
        bool, typer.Option("--half", help="Store the weights as float16 (half the file).")
    ] = False,
    make_default: Annotated[
        bool,
        typer.Option(
            "--default",
            help="Make it the default classifier of the manifest in its folder (with a card).",
        ),
    ] = False,
) -> None:
    """Train the classifier (cross-entropy, SGD); writes FILE and FILE's .json summary."""
    from lisegagr_core.classify import ClassifierConfig, train_classifier

    if backbone not in BACKBONES:
        raise fail(f"--backbone must be one of {', '.join(BACKBONES)}, not {backbone!r}.")
    if schedule not in SCHEDULES:
        raise fail(f"--schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}.")
    config = ClassifierConfig.model_validate({"backbone": backbone, "input_size": input_size})
    table = Table("epoch", "train loss", "train acc.", "test loss", "test acc.", "test F1", "s")

    def on_epoch(metrics: Any) -> None:
        table.add_row(
            str(metrics.epoch),
            f"{metrics.train_loss:.4f}",
            f"{metrics.train_accuracy:.3f}",
            f"{metrics.test_loss:.4f}",
            f"{metrics.test_accuracy:.3f}",
            f"{metrics.test_f1:.3f}",
            f"{metrics.seconds:.0f}",
        )
        say(
            f"epoch {metrics.epoch}:",
            f"loss {metrics.train_loss:.4f}, test accuracy {metrics.test_accuracy:.3f}, "
            f"test F1 {metrics.test_f1:.3f}",
        )

    try:
        with RichProgress() as progress:
            report = train_classifier(
                data,
                output,
                config,
                epochs=epochs,
                batch_size=batch_size,
                lr=lr,
                momentum=momentum,
                weight_decay=weight_decay,
                device=device,
                imagenet_weights=imagenet_weights,
                schedule=schedule,  # type: ignore[arg-type]
                augment=augment,
                seed=seed,
                num_workers=workers,
                half=half,
                progress=progress,
                on_epoch=on_epoch,
            )
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    summary = output.with_name(output.name + ".json")
    summary.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    if make_default:
        from lisegagr_core.classify.card import write_classifier_card
        from lisegagr_core.training import register_classifier

        card = write_classifier_card(report, data, output.with_suffix(".md"))
        try:
            register_classifier(
                output.parent / "manifest.json",
                output,
                card_path=card,
                source=f"trained by `lisegagr classifier train` on {data}; see {card.name}",
            )
        except LisegagrError as exc:
            raise fail(str(exc)) from None
        out.print(f"registered {output.name} as the default classifier; card {card}")
    out.print(table)
    out.print(
        f"{output} (sha256 {report.sha256[:16]}…, {report.seconds:.0f} s on {report.device}); "
        f"summary {summary}",
        soft_wrap=True,
    )


@classifier_app.command("eval", cls=renamed_options(json="-o/--out"))
def evaluate_command(
    classifier: Annotated[Path, typer.Argument(help="Classifier file.")],
    data: Annotated[Path, typer.Argument(help="Crop dataset.")],
    split: Annotated[str, typer.Option(help="train or test.")] = "test",
    json_path: Annotated[
        Path | None, typer.Option(*OUT, help="A JSON file the scores go to (default: none).")
    ] = None,
    device: DeviceOption = None,
) -> None:
    """Accuracy, precision, recall, F1, confusion matrix and ROC AUC on held-out crops."""
    from lisegagr_core.classify import evaluate_classifier

    try:
        scores = evaluate_classifier(classifier, data, split=split, device=device)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    if json_path is not None:
        json_path.write_text(json.dumps(scores, indent=2) + "\n")
    table = Table("metric", "value", title=f"{classifier.name} on {data}/{split}")
    for key in ("crops", "accuracy", "precision", "recall", "f1", "roc_auc"):
        value = scores[key]
        table.add_row(key, "-" if value is None else f"{value:.4g}")
    table.add_row("majority baseline accuracy", f"{scores['majority_baseline_accuracy']:.4g}")
    out.print(table)
    confusion = Table("true \\ predicted", "field", "nonfield")
    for true_class, row in scores["confusion"].items():
        confusion.add_row(true_class, str(row["field"]), str(row["nonfield"]))
    out.print(confusion)
