"""`lisegagr model`: train the project's own Segment Anything model on field polygons, evaluate it.

    lisegagr model train DATA -o weights/NAME.pt [--config FILE] [--steps N] [--device cuda]
    lisegagr model evaluate NAME DATA [--working-size N] [--points-per-side N ...]

Every error the user can fix is printed as one sentence, never as a traceback.
"""

from __future__ import annotations

import json
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from lisegagr.cli import app
from lisegagr.options import (
    OUT,
    DeviceOption,
    RichProgress,
    WeightsDir,
    fail,
    out,
    renamed_options,
    say,
)
from lisegagr_core.errors import LisegagrError
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest

model_app = typer.Typer(
    no_args_is_help=True,
    help="Train the project's own SAM on field polygons, and evaluate it.",
)
app.add_typer(model_app, name="model")

log = logging.getLogger("lisegagr")

MANIFEST_NAME = "manifest.json"

DataArgument = Annotated[
    Path,
    typer.Argument(
        help="A VGG Image Annotator JSON file (images beside it or in images/), or a folder of "
        "LabelMe JSON files or of GeoJSON files next to rasters of the same name."
    ),
]
ResultsDir = Annotated[
    Path, typer.Option("--results-dir", help="Where the evaluation table JSON is written.")
]
ThreadsOption = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (on a busy machine 1 can be several times faster).",
    ),
]


def _set_threads(threads: int | None) -> None:
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _raise_interrupt(signum: int, frame: FrameType | None) -> NoReturn:
    raise KeyboardInterrupt


@contextmanager
def _terminate_like_ctrl_c() -> Iterator[None]:
    """SIGTERM (a job scheduler, `timeout`) stops training as Ctrl-C does: with a checkpoint."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@model_app.command("train", cls=renamed_options(output="-o/--out"))
def train(
    data: DataArgument,
    output: Annotated[Path, typer.Option(*OUT, help="The model file to write: weights/NAME.pt.")],
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="YAML/JSON file of training settings (TrainConfig)."),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Training steps (recipe: 2800).")] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Model input side in px (default: the architecture's).")
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help="fields-512 (the recipe), fields-256-cpu, tiny, vit_b, ..."),
    ] = None,
    device: DeviceOption = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per step (recipe: 16).")] = None,
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of images held out for validation (0.2).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed of the split and the training.")] = None,
    init_from: Annotated[
        str | None,
        typer.Option(
            help="Fine-tune: start from this model (a name in weights/manifest.json or a .pt "
            "path) instead of random weights; its input size may differ from --input-size."
        ),
    ] = None,
    checkpoint_dir: Annotated[
        Path | None,
        typer.Option(help="Where checkpoints go (default: out/training/NAME)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option(help="Continue from the newest checkpoint of the same run.")
    ] = True,
    register: Annotated[
        bool, typer.Option(help="Record the model in the manifest beside it.")
    ] = True,
    tune: Annotated[
        bool,
        typer.Option(help="Evaluate on the held-out images and record the best AMG settings."),
    ] = True,
    make_default: Annotated[
        bool, typer.Option("--default/--no-default", help="Make it the manifest's default model.")
    ] = False,
    data_description: Annotated[
        str | None, typer.Option(help="What the images are, for the model card.")
    ] = None,
    results_dir: ResultsDir = Path("bench/results"),
    threads: ThreadsOption = None,
) -> None:
    """Train a small SAM on images with field polygons; write it as an fp16 state dict.

    Ctrl-C or SIGTERM saves a checkpoint; the same command then resumes from it.
    """
    from lisegagr_core.training import (
        load_train_config,
        load_training_set,
        train_sam,
        with_source_architecture,
    )

    name = output.stem
    overrides: dict[str, Any] = {
        "steps": steps,
        "input_size": input_size,
        "architecture": arch,
        "device": device,
        "batch_size": batch_size,
        "val_fraction": val_fraction,
        "seed": seed,
        "init_from": init_from,
    }
    checkpoints = checkpoint_dir or Path("out") / "training" / name
    _set_threads(threads)
    try:
        if output.suffix not in (".pt", ".pth"):
            raise fail(f"{output}: the model file must end in .pt or .pth.")
        train_config = with_source_architecture(load_train_config(config, overrides))
        dataset = load_training_set(
            data,
            train_config.sam_architecture().image_size,
            train_config.val_fraction,
            train_config.seed,
        )
        counts = dataset.counts()
        say(
            "data:",
            f"{counts['train_images']} training images ({counts['train_fields']} fields), "
            f"{counts['validation_images']} held out ({counts['validation_fields']} fields)",
        )
        with _terminate_like_ctrl_c(), RichProgress() as progress:
            result = train_sam(
                dataset,
                output,
                train_config,
                checkpoint_dir=checkpoints,
                resume=resume,
                progress=progress,
                data_description=data_description,
            )
    except KeyboardInterrupt:
        raise fail(f"interrupted; run the same command to resume from {checkpoints}.") from None
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    final = result.history.validation[-1] if result.history.validation else None
    out.print(
        f"{output}: {result.size / 1e6:.1f} MB, sha256 {result.sha256[:12]}…, "
        f"{result.steps} steps on {result.device} in {result.seconds:.0f} s",
        soft_wrap=True,
    )
    if final is not None:
        out.print(
            f"validation: loss {final['loss']:.3f}, mask IoU {final['mask_iou']:.3f} "
            f"(best of 3: {final['best_mask_iou']:.3f})"
        )
    if not register:
        return
    try:
        # a fine-tuned model keeps the AMG settings tuned for its source until it is tuned itself
        inherited = result.initialised_from["settings"] if result.initialised_from else None
        _register(output, name, result.architecture, inherited, make_default, data)
        out.print(f"registered {name} in {output.parent / MANIFEST_NAME}")
        if tune and result.validation_names:
            _evaluate_and_record(
                name,
                data,
                output.parent,
                list(result.validation_names),
                train_config.device,
                {},
                {},
                results_dir,
                record=True,
            )
    except LisegagrError as exc:
        raise fail(str(exc)) from None


@model_app.command("evaluate", cls=renamed_options(results_dir="-o/--out"))
def evaluate(
    name: Annotated[str, typer.Argument(help="A model name from the manifest, or a checkpoint.")],
    data: DataArgument,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    working_size: Annotated[
        int | None, typer.Option(help="Longer side images are resized to (engine default 1000).")
    ] = None,
    points_per_side: Annotated[
        list[int] | None, typer.Option(help="AMG point grid sides to try (repeat the option).")
    ] = None,
    iou_thresh: Annotated[
        list[float] | None, typer.Option(help="AMG predicted-IoU thresholds to try.")
    ] = None,
    stability_thresh: Annotated[
        list[float] | None, typer.Option(help="AMG stability-score thresholds to try.")
    ] = None,
    all_images: Annotated[
        bool,
        typer.Option(help="Use every image of DATA, not only those held out of training."),
    ] = False,
    record: Annotated[
        bool, typer.Option(help="Record the best AMG settings with a project model.")
    ] = True,
    results_dir: Annotated[
        Path, typer.Option(*OUT, help="Folder the evaluation table JSON goes to.")
    ] = Path("bench/results"),
    threads: ThreadsOption = None,
) -> None:
    """Score plain AMG, AMG + post-processing and the full method over a grid of AMG settings."""
    grid: dict[str, Any] = {
        "points_per_side": points_per_side,
        "pred_iou_thresh": iou_thresh,
        "stability_score_thresh": stability_thresh,
    }
    overrides = {"working_size": working_size} if working_size is not None else {}
    _set_threads(threads)
    try:
        names = None if all_images else _held_out_names(name, weights_dir)
        if names is None:
            say("note:", f"evaluating on every annotated image of {data}")
        _evaluate_and_record(
            name, data, weights_dir, names, device, grid, overrides, results_dir, record=record
        )
    except LisegagrError as exc:
        raise fail(str(exc)) from None


def _register(
    model_path: Path,
    name: str,
    architecture: Any,
    settings: dict[str, Any] | None,
    make_default: bool,
    data: Path,
) -> None:
    from lisegagr_core.training import card_path_of, register_model

    card = card_path_of(model_path)
    register_model(
        model_path.parent / MANIFEST_NAME,
        model_path,
        architecture,
        name=name,
        settings=settings,
        card_path=card,
        source=f"trained by `lisegagr model train` on {data}; see {card.name}",
        make_default=make_default,
    )


def _held_out_names(name: str, weights_dir: Path) -> list[str] | None:
    """The validation images named by the training summary of a project model, if it has one."""
    from lisegagr_core.training import summary_path_of

    manifest = Manifest.load(weights_dir / MANIFEST_NAME)
    spec = manifest.entries.get(name)
    if spec is None:
        return None
    summary_path = summary_path_of(weights_dir / spec.filename)
    if not summary_path.is_file():
        return None
    names: list[str] = json.loads(summary_path.read_text(encoding="utf-8"))["data"][
        "validation_names"
    ]
    return names or None


def _evaluate_and_record(
    name: str,
    data: Path,
    weights_dir: Path,
    image_names: list[str] | None,
    device: str | None,
    grid_lists: dict[str, Any],
    overrides: dict[str, Any],
    results_dir: Path,
    *,
    record: bool,
) -> None:
    """Evaluate model `name` on `data`, write the table, and record the best settings with it."""
    from lisegagr_core.config import load_config
    from lisegagr_core.models import load_sam
    from lisegagr_core.training import (
        EvaluationGrid,
        card_path_of,
        evaluate_model,
        load_scenes,
        summary_path_of,
        write_evaluation,
        write_model_card,
    )

    manifest = Manifest.load(weights_dir / MANIFEST_NAME)
    sam = load_sam(name, weights_dir=weights_dir, manifest=manifest, device=device)
    config = load_config(None, overrides, model_settings=sam.engine_settings)
    grid = EvaluationGrid(**{key: value for key, value in grid_lists.items() if value})
    scenes = load_scenes(data, image_names)
    with RichProgress() as progress:
        evaluation = evaluate_model(sam, scenes, grid=grid, config=config, progress=progress)
    table_path = results_dir / f"model_eval_{Path(name).stem}.json"
    write_evaluation(evaluation, table_path)
    _print_evaluation(evaluation.to_dict())
    out.print(f"evaluation table: {table_path}", soft_wrap=True)
    spec = manifest.entries.get(name)
    if not record or spec is None or spec.url is not None:
        return
    model_path = weights_dir / spec.filename
    _register(model_path, name, sam.architecture, evaluation.best_settings(), False, data)
    summary_path = summary_path_of(model_path)
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
        write_model_card(summary, card_path_of(model_path), evaluation.to_dict())
    out.print(f"recorded AMG settings {evaluation.best_settings()} with {name}", soft_wrap=True)


def _print_evaluation(evaluation: dict[str, Any]) -> None:
    table = Table(
        "points/side",
        "IoU thr.",
        "stab. thr.",
        "AMG F1 / IoU",
        "AMG+post F1 / IoU",
        "full F1 / IoU",
        title=f"{evaluation['model']} on {len(evaluation['images'])} images",
    )
    for index, result in enumerate(evaluation["results"]):
        amg, pipelines = result["amg"], result["pipelines"]
        marker = " *" if index == evaluation["best_index"] else ""
        table.add_row(
            f"{amg['points_per_side']}{marker}",
            f"{amg['pred_iou_thresh']:g}",
            f"{amg['stability_score_thresh']:g}",
            *(_scores_cell(pipelines.get(name)) for name in ("amg", "amg_post", "full")),
        )
    out.print(table)
    out.print(f"* best: {evaluation['selected_by']}", soft_wrap=True)


def _scores_cell(scores: dict[str, float] | None) -> str:
    return "-" if scores is None else f"{scores['f1']:.3f} / {scores['pixel_iou']:.3f}"
