"""What `lisegagr eval` compares: a prediction, and the ground truth on its grid.

A prediction (`read_predictions`) is one of

- a label raster ((H, W) integer ids, 0 = background), e.g. ``<stem>.labels.tif``;
- an output folder of `lisegagr segment`: every ``*.labels.tif`` in it, with the stage of each
  instance from ``<stem>.instances.csv`` (or ``.parquet``) and the image from ``<stem>.json``;
- an output folder of `lisegagr run`: ``mosaic.zarr``'s labels (georeferenced) and the stages
  in ``fields.parquet``.

The ground truth (`read_truth`) is a label raster of the same grid, or polygons
(`ground_truth.read_polygon_sets`: VIA, LabelMe, GeoJSON, GeoParquet, GeoPackage...),
rasterised on the prediction's grid: pixel polygons of the image of the same name, map polygons
through the prediction's georeference.
"""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning, RasterioError

from lisegagr_core.annotations import rasterize_instances
from lisegagr_core.errors import InputError
from lisegagr_core.ground_truth import (
    PolygonSet,
    is_polygon_file,
    place_polygons,
    read_polygon_sets,
)
from lisegagr_core.imagery import RASTER_SUFFIXES, read_image
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.store import RegionPaths

log = logging.getLogger(__name__)

LABELS_SUFFIX = ".labels.tif"


@dataclass(frozen=True, eq=False)
class Prediction:
    """One predicted partition and what is known about it.

    labels: (H, W) uint32 ids, 0 = background. stages: instance id → the stage that made it
    ("round 1", ..., "refinement"), when recorded. image_path: the image it was made from.
    """

    name: str
    source: str
    labels: NDArray[np.uint32]
    transform: Affine | None = None
    crs: CRS | None = None
    stages: dict[int, str] | None = None
    image_path: str | None = None


def read_predictions(path: Path) -> list[Prediction]:
    """The predictions of a label raster or of a `segment` / `run` output folder."""
    if path.is_dir():
        if RegionPaths(str(path)).exists(RegionPaths(str(path)).mosaic):
            return [_run_output(path)]
        rasters = sorted(path.glob(f"*{LABELS_SUFFIX}"))
        if not rasters:
            raise InputError(
                f"{path} is neither a `lisegagr segment` output (no *{LABELS_SUFFIX}) nor a "
                "`lisegagr run` output (no mosaic.zarr)."
            )
        return [_label_raster(raster) for raster in rasters]
    if path.is_file():
        return [_label_raster(path)]
    raise InputError(f"{path}: no such file or folder.")


def read_truth(path: Path, prediction: Prediction) -> NDArray[np.uint32]:
    """Ground-truth ids (H, W) uint32 on the prediction's grid, from a raster or polygons."""
    shape = (int(prediction.labels.shape[0]), int(prediction.labels.shape[1]))
    if path.suffix.lower() in RASTER_SUFFIXES:
        truth = _read_band(path)
        if truth.shape != shape:
            raise InputError(
                f"{path} is {truth.shape[1]}×{truth.shape[0]} px but the prediction "
                f"{prediction.source} is {shape[1]}×{shape[0]} px."
            )
        return truth
    if not is_polygon_file(path):
        raise InputError(f"{path} is neither a label raster nor a polygon file.")
    polygons = []
    for polygon_set in _sets_for(read_polygon_sets(path), prediction, path):
        polygons.extend(
            place_polygons(
                polygon_set,
                shape,
                transform=prediction.transform,
                crs=prediction.crs,
                image_name=prediction.source,
                require_inside=False,
            )
        )
    return rasterize_instances(polygons, shape)


def _sets_for(sets: list[PolygonSet], prediction: Prediction, path: Path) -> list[PolygonSet]:
    """The polygon sets that describe the prediction's image."""
    map_sets = [s for s in sets if s.in_map_coordinates]
    if map_sets:
        return map_sets
    named = [s for s in sets if s.image is not None and Path(s.image).stem == prediction.name]
    if named:
        return named
    if len(sets) == 1:
        return sets
    raise InputError(f"{path} has no polygons for the image {prediction.name}.")


def _read_band(path: Path) -> NDArray[np.uint32]:
    """Band 1 of a label raster as uint32; `InputError` naming the file when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                band = dataset.read(1)
    except RasterioError as exc:
        raise InputError(f"{path} could not be read as a label raster ({exc}).") from None
    if not np.issubdtype(band.dtype, np.integer) or (band.size and band.min() < 0):
        raise InputError(f"{path} is not a label raster (expected non-negative integer ids).")
    return band.astype(np.uint32)


def _label_raster(path: Path) -> Prediction:
    """A label raster, with the stages and image a `segment` output records beside it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as dataset:
                transform = None if dataset.transform.is_identity else dataset.transform
                crs = dataset.crs
    except RasterioError as exc:
        raise InputError(f"{path} could not be read as a label raster ({exc}).") from None
    stem = path.name.removesuffix(LABELS_SUFFIX) if path.name.endswith(LABELS_SUFFIX) else path.stem
    stages = None
    for table in (
        path.with_name(f"{stem}.instances.csv"),
        path.with_name(f"{stem}.instances.parquet"),
    ):
        if table.is_file():
            frame = pd.read_csv(table) if table.suffix == ".csv" else pd.read_parquet(table)
            stages = _stages_of(frame, table)
            break
    image_path = None
    labelme = path.with_name(f"{stem}.json")
    if labelme.is_file():
        image_name = json.loads(labelme.read_text(encoding="utf-8")).get("imagePath")
        if isinstance(image_name, str):
            image_path = str(path.parent / image_name)
    return Prediction(
        name=stem,
        source=str(path),
        labels=_read_band(path),
        transform=transform,
        crs=crs,
        stages=stages,
        image_path=image_path,
    )


def _run_output(folder: Path) -> Prediction:
    """The labels of a `run` output's mosaic, its georeference, and stages from fields.parquet."""
    import rioxarray  # noqa: F401  (registers the .rio accessor)
    import xarray as xr

    paths = RegionPaths(str(folder))
    try:
        # chunks=None: read with Zarr, not a Dask graph (whatever Dask scheduler is configured)
        mosaic = xr.open_zarr(paths.mosaic, decode_coords="all", consolidated=False, chunks=None)
        labels = np.asarray(mosaic["labels"].values, dtype=np.uint32)
        transform, crs = mosaic.rio.transform(), mosaic.rio.crs
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{paths.mosaic} could not be read ({exc}).") from None
    stages = None
    fields_path = Path(paths.fields)
    if fields_path.is_file():
        import pyarrow.parquet as pq

        names = set(pq.read_schema(fields_path).names)
        stage = "lisegagr:stage" if "lisegagr:stage" in names else "stage"  # fiboa, or older
        table = pd.read_parquet(fields_path, columns=[c for c in ("id", stage) if c in names])
        stages = _stages_of(table.rename(columns={stage: "stage"}), fields_path)
    image_path = None
    if paths.exists(paths.manifest):
        described = read_manifest(str(folder)).input
        rasters = described.get("rasters", [])
        if len(rasters) == 1 and described.get("shape") == list(labels.shape):
            image_path = rasters[0]
    return Prediction(
        name=folder.name,
        source=paths.mosaic,
        labels=labels,
        transform=transform,
        crs=CRS.from_user_input(crs) if crs is not None else None,
        stages=stages,
        image_path=image_path,
    )


def _stages_of(frame: pd.DataFrame, path: Path) -> dict[int, str] | None:
    """id → stage from an instance table, or None when it has no such columns."""
    if "id" not in frame.columns or "stage" not in frame.columns:
        log.info("%s records no stages", path)
        return None
    known = frame.dropna(subset=["id", "stage"])
    return dict(zip(known["id"].astype(int).tolist(), known["stage"].astype(str), strict=True))


def image_of(prediction: Prediction) -> NDArray[np.uint8] | None:
    """The image a prediction was made from, at its size, when it can be read."""
    if prediction.image_path is None:
        return None
    try:
        rgb = read_image(prediction.image_path).rgb
    except InputError as exc:
        log.warning("no picture background: %s", exc)
        return None
    if rgb.shape[:2] != prediction.labels.shape:
        log.warning("%s is not the prediction's size; grey background", prediction.image_path)
        return None
    return rgb
