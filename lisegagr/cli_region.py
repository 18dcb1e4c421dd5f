"""`lisegagr run`, `export` and `preview`: rasters of any size into a Zarr mosaic and polygons."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from lisegagr.cli import (
    ConfigOption,
    DeviceOption,
    ModelOption,
    PointsOption,
    WeightsDir,
    _fail,
    _say,
    app,
    choose_model,
    console,
    out,
)
from lisegagr_core.errors import LisegagrError
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest

EXPORT_DRIVERS = {"gpkg": "GPKG", "geojson": "GeoJSON", "fgb": "FlatGeobuf"}


def _bands(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(b) for b in text.split(","))
    except ValueError:
        raise _fail(
            f"--bands takes 1-based band numbers separated by commas, not {text!r}."
        ) from None


@app.command()
def run(
    sources: Annotated[
        list[str], typer.Argument(help="Rasters, globs or folders (local, s3://, any fsspec URL).")
    ],
    output: Annotated[str, typer.Option("--out", "-o", help="Output folder or URL.")],
    bands: Annotated[str | None, typer.Option(help="Bands as RGB, e.g. 4,3,2 (1-based).")] = None,
    upscale: Annotated[int | None, typer.Option(help="Super-resolution factor (Lanczos).")] = None,
    upscale_model: Annotated[
        Path | None, typer.Option(help="Super-resolution weights (spandrel, e.g. Real-ESRGAN).")
    ] = None,
    core: Annotated[int | None, typer.Option(help="Tile core side in pixels.")] = None,
    halo: Annotated[int | None, typer.Option(help="Tile halo in pixels.")] = None,
    model: ModelOption = None,
    weights_dir: WeightsDir = DEFAULT_WEIGHTS_DIR,
    device: DeviceOption = None,
    config: ConfigOption = None,
    points_per_side: PointsOption = None,
) -> None:
    """Map the fields of a region: tiles, cross-tile merge, mosaic.zarr and fields.parquet."""
    from lisegagr_core.config import load_region_config
    from lisegagr_core.models import load_sam, model_description
    from lisegagr_core.rasters import open_rasters
    from lisegagr_core.region import RegionPaths, TileStatus, plan, run_region
    from lisegagr_core.sources import SamMaskSource
    from lisegagr_core.superres import load_upscaler

    overrides: dict[str, Any] = {}
    for key, value in (
        ("bands", _bands(bands)),
        ("upscale", upscale),
        ("core", core),
        ("halo", halo),
        ("engine.amg.points_per_side", points_per_side),
        ("upscale_model", str(upscale_model) if upscale_model else None),
    ):
        if value is not None:
            overrides[key] = value
    try:
        manifest = Manifest.load(weights_dir / "manifest.json")
        sam = load_sam(
            choose_model(model, weights_dir, manifest),
            weights_dir=weights_dir,
            manifest=manifest,
            device=device,
        )
        region_config = load_region_config(config, overrides, model_settings=sam.settings)
        upscaler, factor = None, region_config.upscale
        if region_config.upscale_model:
            upscaler, factor, described_sr = load_upscaler(region_config.upscale_model, device)
            _say("super-resolution:", described_sr)
            region_config = region_config.model_copy(update={"upscale": factor})
        rasters = open_rasters(
            sources, bands=region_config.bands, upscale=factor, upscaler=upscaler
        )
    except LisegagrError as exc:
        raise _fail(str(exc)) from None
    described = model_description(sam)
    _say("model:", described)
    source = SamMaskSource(sam, region_config.engine.amg)
    grid = plan(rasters, region_config)
    counts = {"computed": 0, "cached": 0, "empty": 0, "failed": 0}
    with Progress(
        TextColumn("[bold]tiles"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[counts]}"),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task("tiles", total=len(grid), counts="")

        def on_tile(status: TileStatus) -> None:
            counts[status.status] += 1
            progress.update(
                task, advance=1, counts=" ".join(f"{k} {v}" for k, v in counts.items() if v)
            )

        report = run_region(
            rasters,
            lambda spec: source,
            region_config,
            RegionPaths(output),
            model_id=f"{sam.name}:{sam.checkpoint_sha256}",
            model=described,
            on_tile=on_tile,
        )
    out.print(
        f"{report.fields} fields from {len(grid)} tiles in {report.seconds:.1f} s "
        f"({', '.join(f'{v} {k}' for k, v in counts.items() if v)}), made by {described}",
        soft_wrap=True,
    )
    for path in (report.paths.mosaic, report.paths.fields, report.paths.manifest):
        out.print(f"  {path}", soft_wrap=True)
    for failed in report.failed:
        _say("[red]failed:[/]", f"tile {failed.key}: {failed.error}")
    if report.failed:
        raise typer.Exit(code=1)


@app.command()
def export(
    output: Annotated[str, typer.Argument(help="A run's output folder.")],
    format: Annotated[str, typer.Option("--format", "-f", help="gpkg, geojson or fgb.")] = "gpkg",
    destination: Annotated[str | None, typer.Option("--to", help="File to write.")] = None,
) -> None:
    """Write the run's field polygons as GeoPackage, GeoJSON or FlatGeobuf."""
    import geopandas as gpd

    if format not in EXPORT_DRIVERS:
        raise _fail(f"--format must be one of {', '.join(EXPORT_DRIVERS)}, not {format!r}.")
    source = f"{output.rstrip('/')}/fields.parquet"
    try:
        fields = gpd.read_parquet(source)
    except (OSError, ValueError) as exc:
        raise _fail(
            f"{source} could not be read ({exc.__class__.__name__}); is {output} a run's output?"
        ) from None
    target = destination or f"{output.rstrip('/')}/fields.{format}"
    fields.to_file(target, driver=EXPORT_DRIVERS[format])
    out.print(f"{len(fields)} fields → {target}")


@app.command()
def preview(
    output: Annotated[str, typer.Argument(help="A run's output folder.")],
    image: Annotated[Path, typer.Option("-o", "--image", help="PNG to write.")] = Path(
        "preview.png"
    ),
    bbox: Annotated[
        str | None, typer.Option(help="minx,miny,maxx,maxy in the raster's CRS (default: all).")
    ] = None,
    max_side: Annotated[int, typer.Option(help="Longest side of the picture in pixels.")] = 2048,
) -> None:
    """The imagery with field outlines, for a region or a bounding box of it."""
    from lisegagr_core.preview import render_preview

    try:
        box = tuple(float(v) for v in bbox.split(",")) if bbox else None
        if box is not None and len(box) != 4:
            raise ValueError
    except ValueError:
        raise _fail(f"--bbox takes minx,miny,maxx,maxy, not {bbox!r}.") from None
    try:
        picture = render_preview(output, box, max_side=max_side)
    except LisegagrError as exc:
        raise _fail(str(exc)) from None
    import cv2

    cv2.imwrite(str(image), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    out.print(f"{picture.shape[1]}×{picture.shape[0]} preview → {image}")
