"""`lisegagr run`, `export` and `preview`: rasters of any size into a Zarr mosaic and polygons."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from lisegagr.cli import app
from lisegagr.options import (
    OUT,
    DeviceOption,
    ModelOption,
    PointsOption,
    RegionConfigOption,
    WeightsDir,
    fail,
    out,
    parse_bands,
    progress_bars,
    renamed_options,
    say,
)
from lisegagr_core.errors import LisegagrError
from lisegagr_core.run.export import EXPORT_FORMATS
from lisegagr_core.storage import check_writable
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR

if TYPE_CHECKING:
    from lisegagr_core.run import RunManifest, RunRequest


def execute_run(
    request: RunRequest,
    *,
    scheduler: str | None = None,
    workers: int | None = None,
    segmentation_resource: str = "auto",
    wait_for_workers: float | None = None,
    connect_timeout: float | None = None,
) -> RunManifest:
    """Assemble the run `request` asks for and claim its output (`claim_run`), then run the
    region flow on one Prefect server and a Dask cluster (`scheduler`'s, or a local one of
    `workers`).

    Bad input (a raster, a band, a checkpoint, a setting, a busy output, a scheduler that does
    not answer) fails here in one sentence, before any server or cluster starts. While no
    worker can take segmentation the progress line says what the run waits for; after
    `wait_for_workers` seconds the run stops, resumable (exit 1). Returns the run's manifest.
    """
    from flows.cluster import (
        CONNECT_TIMEOUT_S,
        WAIT_FOR_WORKERS_S,
        NoWorkers,
        Placement,
        check_scheduler,
        listening_to_cluster,
        parse_resource,
    )
    from flows.region import listening_to_tiles, map_region, one_sentence_errors, task_runner
    from flows.server import prefect_server
    from lisegagr_core.run import TileStatus
    from lisegagr_core.run.assemble import claim_run

    output = request.out
    placement = Placement(
        segmentation_resource,
        WAIT_FOR_WORKERS_S if wait_for_workers is None else wait_for_workers,
        resume_hint=f"lisegagr resume {output}",
    )
    with contextlib.ExitStack() as claimed:
        try:
            parse_resource(segmentation_resource)
            if scheduler:  # before anything is loaded, written or started
                check_scheduler(
                    scheduler, CONNECT_TIMEOUT_S if connect_timeout is None else connect_timeout
                )
            planned = claimed.enter_context(claim_run(request))
        except LisegagrError as exc:
            raise fail(str(exc)) from None
        say("model:", planned.source.describe())
        for note in planned.notes:
            say("[yellow]note:[/]", note)
        tiles = len(planned.grid)
        counts = {"computed": 0, "cached": 0, "empty": 0, "failed": 0}
        with (
            prefect_server(os.environ.get("PREFECT_API_URL"), home=_prefect_home()) as api,
            progress_bars(
                "counts",
                elapsed=False,
                # Prefect ships its context (log handlers and their streams) to the workers;
                # a redirected stream (it holds a lock) cannot travel.
                redirect_stdout=False,
                redirect_stderr=False,
            ) as progress,
        ):
            say("prefect:", f"{api.removesuffix('/api')} (runs, tasks and logs)")
            bar = progress.add_task("tiles", total=tiles, counts="starting workers")

            def on_tile(status: TileStatus) -> None:
                counts[status.status] = counts.get(status.status, 0) + 1
                shown = " ".join(f"{k} {v}" for k, v in counts.items() if v)
                progress.update(bar, advance=1, counts=shown)

            said = {"line": ""}

            def on_cluster(kind: str, line: str, waited: float) -> None:
                if kind == "unfit":
                    say("[yellow]worker:[/]", line)
                elif kind == "note":
                    say("[yellow]note:[/]", line)
                elif kind == "waiting":
                    if line != said["line"]:
                        say("[yellow]waiting:[/]", line)
                    progress.update(bar, counts=f"waiting for workers {waited:.0f} s")
                else:
                    shown = " ".join(f"{k} {v}" for k, v in counts.items() if v)
                    progress.update(bar, counts=shown or "segmenting")
                said["line"] = line if kind == "waiting" else ""

            try:
                with (
                    listening_to_tiles(on_tile),
                    listening_to_cluster(on_cluster),
                    one_sentence_errors(),
                ):
                    manifest: RunManifest = map_region.with_options(
                        task_runner=task_runner(scheduler, workers)
                    )(planned, placement)
            except NoWorkers as exc:
                say("[bold red]error:[/]", str(exc))
                raise typer.Exit(code=1) from None
            except LisegagrError as exc:
                raise fail(str(exc)) from None
    counts = manifest.counts
    out.print(
        f"{manifest.fields} fields from {tiles} tiles in {manifest.seconds:.1f} s "
        f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)}), made by "
        f"{planned.source.describe()}",
        soft_wrap=True,
    )
    paths = planned.paths
    for url in (paths.mosaic, paths.fields, paths.manifest):
        out.print(f"  {url}", soft_wrap=True)
    for key, status in manifest.tiles.items():
        if status.status == "failed":
            say("[red]failed:[/]", f"tile {key}: {status.error}")
    if counts["failed"]:
        say(
            "",
            f"{counts['failed']} tile(s) failed; fix the cause and run `lisegagr resume {output}`.",
        )
    return manifest


def _prefect_home() -> Path:
    """Where the local Prefect server keeps its database (kept between runs for the UI)."""
    return Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))


def _parse_bbox(text: str | None) -> tuple[float, float, float, float] | None:
    """minx,miny,maxx,maxy as four numbers, or one sentence naming the option."""
    if text is None:
        return None
    try:
        box = tuple(float(v) for v in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
        raise fail(f"--bbox takes minx,miny,maxx,maxy (min < max), not {text!r}.")
    return box[0], box[1], box[2], box[3]


def _stac_search(
    api: str,
    collections: list[str],
    box: tuple[float, float, float, float] | None,
    datetime: str | None,
) -> str:
    """The source searching `api` (`stac.search_source`), or one sentence."""
    from lisegagr_core.errors import InputError
    from lisegagr_core.stac import search_source

    if box is not None and not (-180 <= box[0] < box[2] <= 180 and -90 <= box[1] < box[3] <= 90):
        shown = ",".join(f"{v:g}" for v in box)
        raise fail(f"with --stac-api, --bbox is longitude, latitude (WGS 84), not {shown}.")
    names = [name.strip() for text in collections for name in text.split(",") if name.strip()]
    try:
        return search_source(api, collections=names, bbox=box, datetime=datetime)
    except InputError as exc:
        raise fail(str(exc)) from None


def _box_in_imagery_crs(
    sources: list[str], box: tuple[float, float, float, float], bands: tuple[int, ...] | None
) -> tuple[float, float, float, float]:
    """`box` (longitude, latitude) in the CRS of the imagery the sources hold; the imagery
    found (searched, opened) here first, so a search that fails is one sentence up front."""
    from rasterio.warp import transform_bounds

    from lisegagr_core.rasters import open_rasters

    try:
        crs = open_rasters(sources, bands=bands).crs
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    west, south, east, north = transform_bounds("EPSG:4326", crs, *box)
    return west, south, east, north


def _stac_sources(sources: list[str], asset: str | None) -> list[str]:
    """STAC sources with the assets to read (`stac.with_assets`), or one sentence."""
    from lisegagr_core.errors import InputError
    from lisegagr_core.stac import check_sources

    try:
        return check_sources(sources, asset)
    except InputError as exc:
        raise fail(str(exc)) from None


#: A run's output folder or URL, as an argument (what `run -o` wrote).
RunArgument = typer.Argument(metavar="RUN", help="A run's output folder or URL (its -o/--out).")
BboxOption = Annotated[
    str | None,
    typer.Option(
        help="minx,miny,maxx,maxy in the rasters' CRS (with --stac-api: longitude, latitude, "
        "WGS 84): map only this box."
    ),
]
SchedulerOption = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        envvar="DASK_SCHEDULER_ADDRESS",
        help="An existing Dask scheduler (tcp://host:8786); default: a local cluster.",
    ),
]
SegmentationResourceOption = Annotated[
    str,
    typer.Option(
        "--segmentation-resource",
        envvar="LISEGAGR_SEGMENTATION_RESOURCE",
        help="Dask resource a worker must offer to segment: GPU=1, none (any worker), or auto "
        "(GPU=1 when a worker offers it or the model needs CUDA, else any worker).",
    ),
]
WaitForWorkersOption = Annotated[
    float | None,
    typer.Option(
        "--wait-for-workers",
        metavar="SECONDS",
        help="How long a run waits for a worker that can segment before it stops, "
        "resumable (default 600).",
    ),
]
ConnectTimeoutOption = Annotated[
    float | None,
    typer.Option(
        "--connect-timeout",
        metavar="SECONDS",
        help="How long to try reaching --scheduler before refusing the run (default 10).",
    ),
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", help="Local cluster size (default: by GPUs or cores).")
]


@app.command()
def run(
    output: Annotated[
        str, typer.Option(*OUT, help="Folder or URL the map goes to (mosaic, fields, manifest).")
    ],
    sources: Annotated[
        list[str] | None,
        typer.Argument(
            help="Rasters, globs, folders or STAC items, item collections, static catalogs "
            "(.json; local, s3://, any fsspec URL); or none, with --stac-api."
        ),
    ] = None,
    bands: Annotated[str | None, typer.Option(help="Bands as RGB, e.g. 4,3,2 (1-based).")] = None,
    asset: Annotated[
        str | None,
        typer.Option(help="STAC sources: the asset(s) of each item, visual (default) or R,G,B."),
    ] = None,
    stac_api: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Search this STAC API for the imagery (items of --collection in --bbox, then "
            "in longitude, latitude, at --datetime); the map is cut to --bbox.",
        ),
    ] = None,
    collection: Annotated[
        list[str] | None,
        typer.Option(help="--stac-api: a collection to search (repeat, or a,b).", metavar="ID"),
    ] = None,
    datetime: Annotated[
        str | None,
        typer.Option(
            help="--stac-api: when (RFC 3339: 2024-07-15, or start/end: 2024-07-01/2024-07-31).",
            metavar="WHEN",
        ),
    ] = None,
    upscale: Annotated[int | None, typer.Option(help="Super-resolution factor (Lanczos).")] = None,
    upscale_model: Annotated[
        Path | None, typer.Option(help="Super-resolution weights (spandrel, e.g. Real-ESRGAN).")
    ] = None,
    bbox: BboxOption = None,
    core: Annotated[int | None, typer.Option(help="Tile core side in pixels.")] = None,
    halo: Annotated[int | None, typer.Option(help="Tile halo in pixels.")] = None,
    tiles_per_task: Annotated[
        int | None,
        typer.Option(help="Tiles per segmentation task, sent through SAM together (GPU: 4)."),
    ] = None,
    classifier: Annotated[
        Path | None,
        typer.Option(
            help="Field / non-field classifier file (default: the one named in the manifest)."
        ),
    ] = None,
    no_classifier: Annotated[
        bool, typer.Option("--no-classifier", help="Leave every instance unclassified.")
    ] = False,
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    config: RegionConfigOption = None,
    points_per_side: PointsOption = None,
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    segmentation_resource: SegmentationResourceOption = "auto",
    wait_for_workers: WaitForWorkersOption = None,
    connect_timeout: ConnectTimeoutOption = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an output holding another region's map.")
    ] = False,
) -> None:
    """Map the fields of a region: tiles on Dask workers, merge, mosaic.zarr, fields.parquet."""
    chosen_bands = parse_bands(bands)
    box = _parse_bbox(bbox)
    sources = list(sources or [])
    if stac_api is not None:
        sources.append(_stac_search(stac_api, collection or [], box, datetime))
    elif collection or datetime:
        raise fail("--collection and --datetime pick the items of a --stac-api search; add one.")
    if not sources:
        raise fail("run needs SOURCES (rasters, folders, globs, STAC documents) or --stac-api URL.")
    sources = _stac_sources(sources, asset)
    if stac_api is not None and box is not None:
        box = _box_in_imagery_crs(sources, box, chosen_bands)
    overrides: dict[str, Any] = {}
    for key, value in (
        ("bands", chosen_bands),
        ("bbox", box),
        ("upscale", upscale),
        ("core", core),
        ("halo", halo),
        ("tiles_per_task", tiles_per_task),
        ("engine.amg.points_per_side", points_per_side),
        ("upscale_model", str(upscale_model) if upscale_model else None),
        ("classifier", str(classifier) if classifier else None),
    ):
        if value is not None:
            overrides[key] = value
    from lisegagr_core.run import RunRequest

    request = RunRequest(
        sources,
        output,
        config,
        overrides,
        model=model,
        weights_dir=weights_dir,
        device=device,
        classify=not no_classifier,
        overwrite=overwrite,
    )
    manifest = execute_run(
        request,
        scheduler=scheduler,
        workers=workers,
        segmentation_resource=segmentation_resource,
        wait_for_workers=wait_for_workers,
        connect_timeout=connect_timeout,
    )
    if manifest.counts["failed"]:
        raise typer.Exit(code=1)


@app.command()
def status(output: Annotated[str, RunArgument]) -> None:
    """Tiles done, cached, failed (with reasons) and pending of a run, finished or not."""
    from rich.table import Table

    from lisegagr_core.run import run_status

    try:
        summary = run_status(output)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    table = Table("status", "tiles")
    for state, count in summary.by_status.items():
        table.add_row(state, str(count))
    out.print(
        f"{output}: {summary.state_text}, {summary.tiles} tiles, model {summary.model}",
        soft_wrap=True,
    )
    out.print(table)
    for key, error in summary.failed.items():
        out.print(f"  failed {key}: {error}", soft_wrap=True)


@app.command()
def resume(
    output: Annotated[str, RunArgument],
    scheduler: SchedulerOption = None,
    workers: WorkersOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    segmentation_resource: SegmentationResourceOption = "auto",
    wait_for_workers: WaitForWorkersOption = None,
    connect_timeout: ConnectTimeoutOption = None,
) -> None:
    """Run again with the configuration recorded in OUTPUT: only unfinished tiles compute."""
    from pydantic import ValidationError

    from lisegagr_core.config import RegionConfig
    from lisegagr_core.run import RunRequest, read_manifest
    from lisegagr_core.source_specs import spec_from_record

    try:
        manifest = read_manifest(output)
        recorded = {
            **manifest.mask_source,
            "weights_dir": manifest.mask_source.get("weights_dir") or str(weights_dir),
        }
        source = spec_from_record(recorded)
        config = RegionConfig.model_validate(manifest.config)
    except ValidationError as exc:
        raise fail(
            f"{output}: the recorded configuration is not one this lisegagr reads "
            f"({exc.errors()[0]['msg']}); run it again with `lisegagr run --overwrite`."
        ) from None
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    resumed = execute_run(
        RunRequest(manifest.sources, output, config, source=source),
        scheduler=scheduler,
        workers=workers,
        segmentation_resource=segmentation_resource,
        wait_for_workers=wait_for_workers,
        connect_timeout=connect_timeout,
    )
    if resumed.counts["failed"]:
        raise typer.Exit(code=1)


#: `export --format`'s help: each format and the files it writes (`EXPORT_FORMATS`).
_FORMATS_HELP = ", ".join(f"{name} ({', '.join(f.files)})" for name, f in EXPORT_FORMATS.items())


@app.command(cls=renamed_options(to="-o/--out"))
def export(
    output: Annotated[str, RunArgument],
    format: Annotated[str, typer.Option("--format", "-f", help=_FORMATS_HELP)] = "gpkg",
    destination: Annotated[
        str | None,
        typer.Option(
            *OUT,
            help="File the export goes to (default: in RUN, named as above); a format of "
            "several files: the folder they go to (default: RUN).",
        ),
    ] = None,
) -> None:
    """Write the run's field polygons as GeoPackage, GeoJSON or FlatGeobuf, or its labels and
    classes rasters as Cloud-Optimised GeoTIFFs (cut to the imagery's extent) for any GIS."""
    from lisegagr_core.run.export import export_run

    if format not in EXPORT_FORMATS:
        raise fail(f"--format must be one of {', '.join(EXPORT_FORMATS)}, not {format!r}.")
    try:
        written = export_run(output, format, destination)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    for url in written:
        out.print(f"→ {url}", soft_wrap=True)


@app.command(cls=renamed_options(image="-o/--out"))
def preview(
    output: Annotated[str, RunArgument],
    image: Annotated[Path, typer.Option(*OUT, help="The PNG file the picture goes to.")] = Path(
        "preview.png"
    ),
    bbox: Annotated[
        str | None, typer.Option(help="minx,miny,maxx,maxy in the raster's CRS (default: all).")
    ] = None,
    max_side: Annotated[int, typer.Option(help="Longest side of the picture in pixels.")] = 2048,
) -> None:
    """The imagery with field outlines, for a region or a bounding box of it."""
    from lisegagr_core.preview import render_preview

    box = _parse_bbox(bbox)
    try:
        picture = render_preview(output, box, max_side=max_side)
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    import cv2

    if not cv2.imwrite(str(image), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR)):
        raise fail(f"{image}: the preview could not be written (is the folder there?).")
    out.print(f"{picture.shape[1]}×{picture.shape[0]} preview → {image}")


@app.command()
def serve(
    source: Annotated[str, typer.Argument(help="Folder, prefix or glob where imagery appears.")],
    output: Annotated[
        str, typer.Option(*OUT, help="Folder or URL each night's map goes to, as for `run`.")
    ],
    cron: Annotated[str, typer.Option(help="When to run (cron, server time zone).")] = "0 2 * * *",
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    config: RegionConfigOption = None,
    scheduler: SchedulerOption = None,
    name: Annotated[str, typer.Option(help="Deployment name.")] = "lisegagr-nightly",
) -> None:
    """Serve the nightly deployment on a schedule (blocks; Ctrl-C stops it)."""
    from flows.server import prefect_server

    deployment = nightly_deployment(
        source, output, cron, model, weights_dir, config, scheduler, name
    )
    with prefect_server(os.environ.get("PREFECT_API_URL"), home=_prefect_home()) as api:
        say("prefect:", f"{api.removesuffix('/api')}: deployment {name}, schedule {cron!r}")
        from prefect import serve as serve_deployments

        serve_deployments(deployment)


def nightly_deployment(
    source: str,
    output: str,
    cron: str,
    model: str | None,
    weights_dir: Path,
    config: Path | None,
    scheduler: str | None,
    name: str = "lisegagr-nightly",
) -> Any:
    """The nightly flow as a deployment with a cron schedule (what `serve` runs)."""
    from flows.nightly import nightly_flow

    return nightly_flow.to_deployment(
        name=name,
        cron=cron,
        parameters={
            "source": source,
            "out": output,
            "config": str(config) if config else None,
            "model": model,
            "scheduler": scheduler,
            "weights_dir": str(weights_dir),
        },
    )


@app.command(cls=renamed_options(output="-o/--out"))
def demo(
    output: Annotated[
        Path, typer.Option(*OUT, help="Folder for the scene, map, preview, scores.")
    ] = Path("demo-out"),
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    size: Annotated[int, typer.Option(help="Side of the generated scene in pixels.")] = 1280,
    points_per_side: PointsOption = 16,
    workers: WorkersOption = None,
    seed: Annotated[int, typer.Option(help="Seed of the generated scene.")] = 0,
) -> None:
    """The main job on an embedded default: a generated georeferenced farmland raster mapped by
    the region flow (local Prefect server, local Dask cluster, local files), then scored."""
    import json

    import numpy as np
    import rasterio

    from lisegagr_core.metrics import score_partition
    from lisegagr_core.mosaic import CLASS_LABELS, open_mosaic, read_window
    from lisegagr_core.preview import render_preview
    from lisegagr_core.run import RegionPaths
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

    try:
        check_writable(str(output))
    except LisegagrError as exc:
        raise fail(str(exc)) from None
    scene = make_farmland_scene(size, seed=seed)
    scene_path = output / "scene.tif"
    write_georeferenced_scene(scene_path, scene)
    mapped = output / "map"
    overrides: dict[str, Any] = {}
    if points_per_side is not None:
        overrides["engine.amg.points_per_side"] = points_per_side
    from lisegagr_core.run import RunRequest

    request = RunRequest(
        [str(scene_path)], str(mapped), None, overrides, model, weights_dir, device
    )
    manifest = execute_run(request, workers=workers)
    # Score the mosaic against the scene's known fields, on the scene's own pixels.
    from rasterio.windows import Window, from_bounds

    paths = RegionPaths(str(mapped))
    group = open_mosaic(paths.mosaic, mode="r")
    with rasterio.open(scene_path) as src:
        window = from_bounds(*src.bounds, manifest.tile_grid.transform).round_offsets()
    labels = read_window(group, Window(window.col_off, window.row_off, size, size))
    scores = score_partition(scene.instances, np.asarray(labels))
    (output / "scores.json").write_text(json.dumps(scores.to_dict(), indent=2) + "\n")
    import cv2
    import geopandas as gpd

    classes = gpd.read_parquet(paths.fields)["lisegagr:class"].value_counts().to_dict()
    counted = (
        ", ".join(f"{n} {CLASS_LABELS.get(c, c)}" for c, n in sorted(classes.items()))
        or "no instances"
    )
    picture = _with_caption(
        render_preview(str(mapped), max_side=1024),
        [
            manifest.model,
            f"{counted}; vs {scores.true_fields} true fields: "
            f"F1 {scores.f1:.2f}, pixel IoU {scores.pixel_iou:.2f}",
        ],
    )
    cv2.imwrite(str(output / "preview.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    out.print(f"instances: {counted}", soft_wrap=True)
    out.print(
        f"against the scene's {scores.true_fields} true fields: object F1 {scores.f1:.2f}, "
        f"field-area pixel IoU {scores.pixel_iou:.2f} (precision {scores.precision:.2f}, "
        f"recall {scores.recall:.2f})",
        soft_wrap=True,
    )
    for path in (scene_path, output / "preview.png", output / "scores.json"):
        out.print(f"  {path}")
    if "random weights" in manifest.model:
        out.print(
            "The model has random weights: it exercises every step but finds no real fields. "
            "Fetch Meta's weights (`lisegagr weights fetch vit_b`) or pass --model PATH.",
            soft_wrap=True,
        )


def _with_caption(picture: Any, lines: list[str]) -> Any:
    """`picture` (RGB) with a black band below it holding `lines` of white text."""
    import cv2
    import numpy as np

    scale = max(picture.shape[1] / 1400, 0.4)
    step = int(30 * scale) + 6
    band = np.zeros((step * len(lines) + 8, picture.shape[1], 3), dtype=np.uint8)
    for i, line in enumerate(lines):
        cv2.putText(
            band,
            line,
            (8, step * (i + 1)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            1,
            cv2.LINE_AA,
        )
    return np.vstack([picture, band])
