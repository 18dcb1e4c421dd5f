"""The `lisegagr` command.

    lisegagr segment IMAGE|FOLDER|GLOB... -o DIR [--model NAME|PATH]
    lisegagr demo [-o DIR]

Every command that writes takes `-o/--out` for where its output goes (the spellings it
replaced, `--output`, `--to`, `--image`, `--json`, `--results-dir`, still work for a release).
    lisegagr weights list | fetch NAME

Every error the user can fix is printed as one sentence, never as a traceback.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.logging import RichHandler
from rich.table import Column, Table

from lisegagr.options import (
    OUT,
    ConfigOption,
    DeviceOption,
    ModelOption,
    PointsOption,
    RichProgress,
    WeightsDir,
    console,
    download_bars,
    fail,
    out,
    parse_bands,
    progress_bars,
    renamed_options,
    say,
)
from lisegagr_core.config import EngineConfig, load_config
from lisegagr_core.errors import LisegagrError
from lisegagr_core.storage import check_writable
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest, WeightsError, choose_model

HELP = """Map agricultural fields in imagery with iterative Segment Anything (LiSegAgr).

Images (JPEG, PNG, GeoTIFF): `lisegagr segment IMAGE... -o DIR`. Rasters of any size, local
or s3://: `lisegagr run SOURCES --out DIR`, then `status`, `resume`, `export`, `preview`.
Try it: `lisegagr demo`. Every command that writes takes -o/--out: where its output goes.
Every error you can fix is one sentence (exit 2), never a traceback.
"""

app = typer.Typer(add_completion=False, no_args_is_help=True, help=HELP, rich_markup_mode=None)
weights_app = typer.Typer(
    no_args_is_help=True,
    help="Segment Anything checkpoints: list and fetch.",
    rich_markup_mode=None,
)
app.add_typer(weights_app, name="weights")

log = logging.getLogger("lisegagr")


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"lisegagr {version('lisegagr')}")
        raise typer.Exit()


@app.callback()
def main(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logs, and Prefect's and Dask's.")
    ] = False,
    show_version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    if not verbose:
        # Prefect's and Dask's INFO chatter (here and in the worker processes they start) stays
        # off the terminal: runs, tasks and their logs are in the Prefect UI.
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        # a local cluster's nannies stop their workers at the end of every run, by design
        logging.getLogger("distributed.nanny").setLevel(logging.ERROR)
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _manifest(weights_dir: Path) -> Manifest:
    return Manifest.load(weights_dir / "manifest.json")


def _engine_setup(
    model: str | None,
    weights_dir: Path,
    device: str | None,
    config_path: Path | None,
    overrides: dict[str, Any],
) -> tuple[Any, EngineConfig, str]:
    from lisegagr_core.models import load_chosen_sam, model_description
    from lisegagr_core.sources import SamMaskSource

    sam = load_chosen_sam(model, weights_dir, device)
    with _engine_section(config_path) as engine_path:
        config = load_config(engine_path, overrides, model_settings=sam.engine_settings)
    return SamMaskSource(sam, config.amg), config, model_description(sam)


@contextmanager
def _engine_section(config_path: Path | None) -> Iterator[Path | None]:
    """The file of engine settings in `config_path`: the file itself when its settings are
    engine settings, else (a file laid out for `run`: region settings at the top) its
    `engine:` section, as a file of its own. Errors name `config_path`, not that file."""
    import tempfile

    import yaml

    from lisegagr_core.config import RegionConfig
    from lisegagr_core.errors import InputError

    data: Any = None
    if config_path is not None and config_path.is_file():
        try:
            data = yaml.safe_load(config_path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            data = None  # load_config reports it
    if not isinstance(data, dict) or not set(data) & set(RegionConfig.model_fields):
        yield config_path
        return
    region_keys = set(RegionConfig.model_fields)
    misplaced = [key for key in data if key not in region_keys]
    if misplaced:
        raise InputError(
            f"{config_path}: {', '.join(misplaced)} at the top of a file laid out for `run` "
            "(region settings at the top); engine settings go under engine:."
        )
    engine = data.get("engine") or {}
    with tempfile.TemporaryDirectory() as folder:
        section = Path(folder) / "engine.json"
        section.write_text(json.dumps(engine))
        try:
            yield section
        except InputError as exc:
            message = str(exc).replace(str(section), f"{config_path} (its engine: section)")
            raise InputError(message) from None


#: What `segment` takes from a folder or a glob.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


def _expand_images(images: list[Path]) -> list[Path]:
    """Folders to the images in them, globs to their matches (sorted); files as given."""
    expanded: list[Path] = []
    for image in images:
        if image.is_dir():
            found = sorted(p for p in image.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise fail(f"{image}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)}).")
            expanded += found
        elif any(ch in str(image) for ch in "*?[") and not image.exists():
            matches = sorted(Path(m) for m in glob.glob(str(image)))
            if not matches:
                raise fail(f"{image}: no image matches this pattern.")
            expanded += matches
        else:
            expanded.append(image)
    return expanded


@app.command(cls=renamed_options(output="-o/--out"))
def segment(
    images: Annotated[
        list[Path], typer.Argument(help="JPEG, PNG or GeoTIFF images, folders of them, or globs.")
    ],
    output: Annotated[Path, typer.Option(*OUT, help="Folder the outputs go to.")],
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    config: ConfigOption = None,
    points_per_side: PointsOption = None,
    working_size: Annotated[
        int | None, typer.Option(help="Longer side the image is resized to (paper: 1000).")
    ] = None,
    table_format: Annotated[str, typer.Option(help="csv or parquet.")] = "csv",
    bands: Annotated[
        str | None, typer.Option(help="Bands as RGB, e.g. 4,3,2, or one as grey (1-based).")
    ] = None,
) -> None:
    """Segment images into field instances (label raster, table, overlay, LabelMe JSON)."""
    from lisegagr_core.single_image import segment_file

    if table_format not in ("csv", "parquet"):
        raise fail(f"--table-format must be csv or parquet, not {table_format!r}.")
    chosen_bands = parse_bands(bands)
    images = _expand_images(images)
    by_stem: dict[str, Path] = {}
    for image in images:
        first = by_stem.setdefault(image.stem, image)
        if first != image:
            raise fail(
                f"{first} and {image} would both be written as {output / image.stem}.*; "
                "segment them into separate output folders, or rename one."
            )
    overrides: dict[str, Any] = {}
    if points_per_side is not None:
        overrides["amg.points_per_side"] = points_per_side
    if working_size is not None:
        overrides["working_size"] = working_size
    try:
        check_writable(str(output))
        source, engine_config, described = _engine_setup(
            model, weights_dir, device, config, overrides
        )
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    say("model:", described)
    failures: list[str] = []
    summary: list[dict[str, Any]] = []
    with progress_bars("current", remaining=False) as progress:
        task = progress.add_task("segmenting", total=len(images), current="")
        for image in images:
            progress.update(task, current=image.name)
            try:
                result = segment_file(
                    image,
                    source,
                    engine_config,
                    output,
                    table_format=table_format,
                    bands=chosen_bands,
                )
            except LisegagrError as exc:
                failures.append(str(exc))
                say("[red]skipped:[/]", str(exc))
            else:
                summary.append(
                    {
                        "image": str(image),
                        "instances": result.instances,
                        "seconds": round(result.seconds, 2),
                        "notes": list(result.notes),
                    }
                )
                for note in result.notes:
                    say("[yellow]note:[/]", f"{image}: {note}")
            progress.advance(task)
    output.mkdir(parents=True, exist_ok=True)
    (output / "run.json").write_text(
        json.dumps(
            {
                "model": described,
                "config": engine_config.model_dump(mode="json"),
                "images": summary,
                "failures": failures,
            },
            indent=2,
        )
        + "\n"
    )
    table = Table("image", "instances", "seconds")
    for row in summary:
        table.add_row(Path(row["image"]).name, str(row["instances"]), f"{row['seconds']:.1f}")
    out.print(table)
    out.print(f"outputs in {output}/ (made by {described})", soft_wrap=True)
    if failures:
        raise typer.Exit(code=1)


@weights_app.command("list")
def weights_list(
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    verify: Annotated[bool, typer.Option(help="Hash present files (slow for vit_h).")] = False,
) -> None:
    """Known checkpoints and whether they are present."""
    from lisegagr_core.weights import list_checkpoints

    try:
        manifest = _manifest(weights_dir)
        statuses = list_checkpoints(manifest, weights_dir, verify=verify)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    default = choose_model(None, weights_dir, manifest)
    table = Table(Column("name", no_wrap=True), "present", "verified", "size", "file")
    if "tiny" not in manifest.entries:
        table.add_row(
            "tiny" + (" (default)" if default == "tiny" else ""),
            "built in",
            "-",
            "-",
            "seeded random weights: exercises every step, finds no real fields",
        )
    for status in statuses:
        table.add_row(
            status.name + (" (default)" if status.name == default else ""),
            "yes" if status.present else "no",
            {True: "ok", False: "MISMATCH", None: "-"}[status.verified],
            f"{status.size / 1e6:.0f} MB" if status.size else "-",
            str(status.path),
        )
    out.print(table)


@weights_app.command("fetch")
def weights_fetch(
    name: Annotated[str, typer.Argument(help="vit_b, vit_l or vit_h.")],
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    manifest_path: Annotated[
        Path | None, typer.Option("--manifest", help="Another manifest of checkpoints.")
    ] = None,
) -> None:
    """Download a checkpoint, verify its sha256, and move it into the weights folder."""
    from lisegagr_core.downloads import fetch_checkpoint

    try:
        manifest = Manifest.load(manifest_path or weights_dir / "manifest.json")
        if name not in manifest.entries:
            raise WeightsError(
                f"unknown checkpoint {name!r}; known: {', '.join(manifest.entries)}."
            )
        spec = manifest.entries[name]
        if spec.url is None:
            raise WeightsError(
                f"{name} is a project model shipped in {weights_dir}; nothing to fetch."
            )
        weights_dir.mkdir(parents=True, exist_ok=True)
        with RichProgress(download_bars()) as progress:
            path = fetch_checkpoint(spec, weights_dir, progress=progress)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    out.print(f"{name}: {path} (sha256 verified)")


# Commands defined in sibling modules register themselves on `app` when imported.
from lisegagr import cli_classifier, cli_eval, cli_model, cli_region  # noqa: E402, F401
