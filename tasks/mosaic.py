"""Region-wide tasks: merge tiles into global ids, write chunks, vectorise, record the run."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from prefect import task

from lisegagr_core.config import RegionConfig
from lisegagr_core.grid import TileGrid, TileSpec
from lisegagr_core.merge import GlobalIds
from lisegagr_core.mosaic import open_mosaic, vectorise_mosaic, write_fields
from lisegagr_core.rasters import RasterSet
from lisegagr_core.region import (
    RegionPaths,
    TileResults,
    TileStatus,
    create_region_mosaic,
    instance_attributes,
    merge,
    write_tile,
)
from tasks.retries import retry_if_transient

#: Storage writes and reads fail transiently (S3, network): retry with backoff.
RETRIES, JITTER = 3, 0.5
BACKOFF: list[float] = [1.0, 4.0, 16.0]


@task(
    name="merge-tiles",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_jitter_factor=JITTER,
    retry_condition_fn=retry_if_transient,
)
def merge_tiles(
    grid: TileGrid, statuses: Mapping[str, TileStatus], config: RegionConfig, paths: RegionPaths
) -> GlobalIds:
    return merge(grid, TileResults(paths, statuses, keep=2 * grid.cols + 4), config)


@task(
    name="create-mosaic",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_jitter_factor=JITTER,
    retry_condition_fn=retry_if_transient,
)
def create_mosaic_task(rasters: RasterSet, grid: TileGrid, paths: RegionPaths) -> None:
    create_region_mosaic(rasters, grid, paths)


@task(
    name="write-tile",
    task_run_name="write {spec.key}",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_jitter_factor=JITTER,
    retry_condition_fn=retry_if_transient,
)
def write_tile_core(
    spec: TileSpec,
    status: TileStatus,
    id_map: NDArray[np.uint32] | None,
    classes_by_id: NDArray[np.uint8],
    paths: RegionPaths,
) -> None:
    """Write one tile's core (its own Zarr chunk) with global ids."""
    results = TileResults(paths, {spec.key: status}, keep=1)
    result = results.get(spec.key)
    ids = GlobalIds({spec.key: id_map if id_map is not None else np.zeros(1, np.uint32)}, 0)
    write_tile(open_mosaic(paths.mosaic, paths.storage_options), spec, result, ids, classes_by_id)


@task(
    name="attributes",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_jitter_factor=JITTER,
    retry_condition_fn=retry_if_transient,
)
def attributes_task(
    grid: TileGrid,
    statuses: Mapping[str, TileStatus],
    ids: GlobalIds,
    paths: RegionPaths,
    model: str,
    field_scores: Mapping[str, Mapping[int, float]],
) -> pd.DataFrame:
    """Per-field attributes (scores area-weighted across tiles) and the class of each field."""
    results = TileResults(paths, statuses, keep=2 * grid.cols + 4)
    attributes = instance_attributes(grid, results, ids, field_scores)
    attributes["model"] = model
    return attributes


@task(
    name="vectorise",
    retries=RETRIES,
    retry_delay_seconds=BACKOFF,
    retry_jitter_factor=JITTER,
    retry_condition_fn=retry_if_transient,
)
def vectorise(
    rasters: RasterSet, grid: TileGrid, attributes: pd.DataFrame, paths: RegionPaths
) -> int:
    """fields.parquet from the written mosaic; returns the number of fields."""
    group = open_mosaic(paths.mosaic, paths.storage_options)
    geometries = vectorise_mosaic(group, grid, rasters.transform)
    frame = write_fields(paths.fields, geometries, attributes, rasters.crs, paths.storage_options)
    return len(frame)
