"""The stages of a region run, as plain functions over values and the output store.

    segment_batch      per batch of tiles: read once, hash, segment, classify (GPU)
    merge_tiles        global ids from the strips neighbouring tiles share
    instance_attributes per field: provenance, SAM's scores, field score and class
    create_region_mosaic, write_chunk_row, vectorise   the mosaic and the polygons

Executors (`pipeline.run_pipeline` with the in-process one, or the Prefect flow on Dask)
call them the same way; they hold the method, the executors only place and retry them.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from numpy.typing import NDArray
from rasterio.windows import Window

from lisegagr_core.config import RegionConfig
from lisegagr_core.errors import InputError
from lisegagr_core.grid import TileGrid, TileSpec
from lisegagr_core.merge import GlobalIds, assign_global_ids, match_overlap
from lisegagr_core.mosaic import (
    CLASS_FIELD,
    CLASS_NODATA,
    CLASS_NON_FIELD,
    CLASS_NONE,
    CLASS_UNCLASSIFIED,
    create_mosaic,
    open_mosaic,
    vectorise_mosaic,
    write_fields,
    write_window,
)
from lisegagr_core.run.manifest import TileStatus
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.tiles import TilePixels, TileResult, read_tile, segment_tiles, tile_hash

if TYPE_CHECKING:
    from lisegagr_core.run.plan import RegionRun

log = logging.getLogger(__name__)

#: Instances whose area-weighted field score reaches this are fields (class 1), else 2.
FIELD_THRESHOLD = 0.5


# -- per tile -----------------------------------------------------------------------------


def segment_batch(run: RegionRun, specs: Sequence[TileSpec]) -> list[TileStatus]:
    """Map a batch of tiles (`RegionConfig.tiles_per_task`), each read once.

    Per tile: read its source pixels and hash them (before any super-resolution); a tile
    without a valid pixel is "empty", one whose result is stored is "cached" (it is not
    super-resolved or segmented again); the others are segmented together, their results
    stored. With a classifier, every instance gets its P(field), from the image the
    segmentation read. A tile that cannot be read is "failed" and the others go on; a
    transient storage error fails the batch, for the executor to retry.
    """
    started = time.perf_counter()
    statuses: dict[str, TileStatus] = {}
    todo: list[tuple[TilePixels, str]] = []
    for spec in specs:
        try:
            pixels = read_tile(run.rasters, spec)
        except InputError as exc:
            statuses[spec.key] = TileStatus(spec.key, "failed", error=describe_error(exc))
            continue
        if pixels.empty:
            statuses[spec.key] = TileStatus(spec.key, "empty")
            continue
        digest = tile_hash(pixels, run.settings)
        if run.paths.exists(run.paths.tile(spec.key, digest)):
            seconds = time.perf_counter() - started
            statuses[spec.key] = TileStatus(spec.key, "cached", digest, seconds=seconds)
        todo.append((pixels, digest))
    fresh = [(p, d) for p, d in todo if p.spec.key not in statuses]
    for result in _segment_fresh(run, fresh):
        run.paths.save_tile_result(result)
        statuses[result.key] = TileStatus(
            result.key, "computed", result.tile_hash, len(result.instances), result.seconds
        )
    if run.config.classifier and run.classifier_hash:
        for pixels, digest in todo:
            _classify_tile(run, pixels, digest)
    worker = worker_name()
    for status in statuses.values():
        status.worker = worker
    return [statuses[spec.key] for spec in specs]


def _segment_fresh(run: RegionRun, todo: Sequence[tuple[TilePixels, str]]) -> list[TileResult]:
    """Segment tiles with the run's mask source; on CUDA out-of-memory halve the prompt
    batch and try again."""
    if not todo:
        return []
    amg = run.config.engine.amg
    images = [pixels.image() for pixels, _ in todo]
    digests = [digest for _, digest in todo]
    while True:
        engine = run.config.engine.model_copy(update={"amg": amg})
        try:
            if run.source.shared_across_tiles:
                source = run.source.build(todo[0][0].spec, amg, run.grid.transform)
                return segment_tiles(images, source, engine, digests)
            return [  # each tile its own source (ground truth), one at a time
                segment_tiles(
                    [image], run.source.build(image.spec, amg, run.grid.transform), engine, [d]
                )[0]
                for image, d in zip(images, digests, strict=True)
            ]
        except Exception as exc:
            # None (sized to the device) tried at most the whole grid: halve from there.
            batch = amg.points_per_batch or amg.points_per_side**2
            if not _is_cuda_oom(exc) or batch <= 1:
                raise
            import torch

            torch.cuda.empty_cache()
            amg = amg.model_copy(update={"points_per_batch": batch // 2})
            log.warning(
                "%s: CUDA out of memory, retrying with %d prompts per batch",
                ", ".join(image.spec.key for image in images),
                amg.points_per_batch,
            )


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _classify_tile(run: RegionRun, pixels: TilePixels, digest: str) -> None:
    """P(field) of every instance of a segmented tile, stored beside its labels, unless they
    are stored (keyed by tile hash and classifier hash: a new classifier redoes only this)."""
    from lisegagr_core.classify import classify_instances
    from lisegagr_core.classify.model import loaded_classifier

    assert run.config.classifier and run.classifier_hash
    key = pixels.spec.key
    if run.paths.exists(run.paths.scores(key, digest, run.classifier_hash)):
        return
    classifier, _ = loaded_classifier(run.config.classifier, run.device)
    result = run.paths.load_tile_result(key, digest)
    scores = classify_instances(pixels.image().rgb, result.labels, classifier)
    run.paths.save_scores(key, digest, run.classifier_hash, scores)


def worker_name() -> str:
    """This process, as a tile status names who computed it (``pid:N``); on a Dask worker the
    task (`tasks.tiles`) names the worker instead."""
    return f"pid:{os.getpid()}"


def describe_error(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"


# -- region-wide ---------------------------------------------------------------------------


class TileResults:
    """Stored tile results by key, loaded on demand with a small cache (bounded memory)."""

    def __init__(self, paths: RegionPaths, statuses: Mapping[str, TileStatus], keep: int = 16):
        self.paths, self.statuses, self.keep = paths, statuses, keep
        self._cache: dict[str, TileResult] = {}

    @classmethod
    def for_grid(
        cls, grid: TileGrid, paths: RegionPaths, statuses: Mapping[str, TileStatus]
    ) -> TileResults:
        """Enough cache for a sweep in tile order: two rows of tiles and their corners."""
        return cls(paths, statuses, keep=2 * grid.cols + 4)

    def get(self, key: str) -> TileResult | None:
        status = self.statuses.get(key)
        if status is None or not status.segmented or status.tile_hash is None:
            return None
        if key not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = self.paths.load_tile_result(key, status.tile_hash)
        return self._cache[key]


def merge_tiles(
    grid: TileGrid, config: RegionConfig, paths: RegionPaths, statuses: Mapping[str, TileStatus]
) -> GlobalIds:
    """Global ids for every tile's instances, from the strips neighbouring tiles share."""
    results = TileResults.for_grid(grid, paths, statuses)
    counts: dict[str, int] = {}
    core_ids: dict[str, np.ndarray] = {}
    for spec in grid:
        result = results.get(spec.key)
        counts[spec.key] = len(result.instances) if result else 0
        core = result.core_labels(spec) if result else np.zeros(0, np.uint32)
        core_ids[spec.key] = np.unique(core[core > 0]) if result else np.zeros(0, np.int64)

    def matches() -> Iterator[tuple[str, str, np.ndarray]]:
        for spec_a, spec_b in grid.forward_pairs():
            a, b = results.get(spec_a.key), results.get(spec_b.key)
            if a is not None and b is not None:
                pairs = match_overlap(
                    a.labels,
                    spec_a,
                    b.labels,
                    spec_b,
                    min_iou=config.merge_min_iou,
                    min_share=config.merge_min_share,
                )
                yield spec_a.key, spec_b.key, pairs

    return assign_global_ids(counts, core_ids, matches())


def instance_attributes(
    grid: TileGrid,
    paths: RegionPaths,
    statuses: Mapping[str, TileStatus],
    ids: GlobalIds,
    classifier_hash: str | None,
    model: str,
) -> pd.DataFrame:
    """Per global id: provenance (tiles and their hashes), SAM's scores and the field score,
    each weighted by the area of the instance's pieces in the tile cores, the class, the
    model and the classifier's hash. Without a classifier every instance is unclassified."""
    results = TileResults.for_grid(grid, paths, statuses)
    rows: list[dict[str, Any]] = []
    for spec in grid:
        result = results.get(spec.key)
        if result is None:
            continue
        scores = (
            paths.load_scores(spec.key, result.tile_hash, classifier_hash)
            if classifier_hash
            else {}
        )
        core = result.core_labels(spec)
        areas = np.bincount(core.ravel(), minlength=len(result.instances) + 1)
        for instance in result.instances:
            if areas[instance.id]:
                rows.append(
                    {
                        "id": int(ids.maps[spec.key][instance.id]),
                        "weight": int(areas[instance.id]),
                        "predicted_iou": instance.predicted_iou,
                        "stability_score": instance.stability_score,
                        "stage": instance.stage,
                        "tile": f"{spec.key}:{result.tile_hash[:16]}",
                        "field_score": scores.get(instance.id),
                    }
                )
    columns = ["predicted_iou", "stability_score", "stage", "tiles", "class", "field_score"]
    if not rows:
        return pd.DataFrame(columns=[*columns, "model", "classifier"])
    pieces = pd.DataFrame(rows)
    weights = pieces["weight"]
    scored = pieces["field_score"].notna()
    grouped = pieces.assign(
        predicted_iou=pieces["predicted_iou"] * weights,
        stability_score=pieces["stability_score"] * weights,
        field_score=pieces["field_score"].fillna(0.0) * weights,
        scored_weight=weights.where(scored, 0),
    ).groupby("id")
    attributes = pd.DataFrame(
        {
            "predicted_iou": grouped["predicted_iou"].sum() / grouped["weight"].sum(),
            "stability_score": grouped["stability_score"].sum() / grouped["weight"].sum(),
            "stage": grouped["stage"].first(),
            "tiles": grouped["tile"].agg(lambda t: ",".join(sorted(set(t)))),
        }
    )
    scored_weight = grouped["scored_weight"].sum().astype(float).replace(0.0, np.nan)
    attributes["field_score"] = grouped["field_score"].sum().astype(float) / scored_weight
    attributes["class"] = np.where(
        attributes["field_score"].isna(),
        CLASS_UNCLASSIFIED,
        np.where(attributes["field_score"] >= FIELD_THRESHOLD, CLASS_FIELD, CLASS_NON_FIELD),
    ).astype(np.uint8)
    attributes = attributes[columns]
    attributes["model"] = model
    attributes["classifier"] = classifier_hash
    return attributes


def classes_by_id(attributes: pd.DataFrame, count: int) -> NDArray[np.uint8]:
    """(count + 1,) uint8 class of each global id (index 0 unused), for the classes raster."""
    lookup = np.full(count + 1, CLASS_UNCLASSIFIED, np.uint8)
    if len(attributes):
        lookup[attributes.index.to_numpy(np.int64)] = attributes["class"].to_numpy(np.uint8)
    return lookup


def create_region_mosaic(grid: TileGrid, paths: RegionPaths) -> None:
    """The empty mosaic of the region's grid (metadata only), chunked by the tile core."""
    create_mosaic(paths.mosaic, grid, storage_options=paths.storage_options)


def write_chunk_row(
    grid: TileGrid,
    paths: RegionPaths,
    statuses: Mapping[str, TileStatus],
    ids: GlobalIds,
    classes_by_id: NDArray[np.uint8],
    chunk_row: int,
) -> None:
    """Write one row of the mosaic's chunks: global ids, and classes (0 background, 1 field,
    2 non-field, 3 unclassified, from `classes_by_id`; 255 nodata: no imagery, or a tile
    that failed). Each chunk is written whole, by this call alone: no locks.

    statuses, ids: at least those of the tiles under the row.
    """
    group = open_mosaic(paths.mosaic, paths.storage_options)
    results = TileResults.for_grid(grid, paths, statuses)
    for chunk in grid.chunks(chunk_row):
        shape = (int(chunk.height), int(chunk.width))
        labels = np.zeros(shape, np.uint32)
        classes = np.full(shape, CLASS_NODATA, np.uint8)
        for spec in grid.tiles_over(chunk):
            result = results.get(spec.key)
            if result is None:
                continue
            part = spec.core.intersection(chunk)
            ids_here = ids.maps[spec.key][result.labels[spec.tile_slices(part)]]
            valid = result.valid[spec.tile_slices(part)]
            where = Window(
                part.col_off - chunk.col_off, part.row_off - chunk.row_off, part.width, part.height
            ).toslices()
            labels[where] = ids_here
            classes[where] = np.where(
                ids_here > 0, classes_by_id[ids_here], np.where(valid, CLASS_NONE, CLASS_NODATA)
            )
        write_window(group, chunk, labels, classes)


def vectorise(grid: TileGrid, paths: RegionPaths, attributes: pd.DataFrame) -> int:
    """fields.parquet (fiboa GeoParquet) from the written mosaic, its collection named after
    the output folder, dated by the imagery the manifest records; returns the number of
    fields."""
    import datetime

    from lisegagr_core.fiboa import collection_id
    from lisegagr_core.run.manifest import read_manifest

    group = open_mosaic(paths.mosaic, paths.storage_options)
    geometries = vectorise_mosaic(group, grid)
    try:
        acquired = read_manifest(paths.root, dict(paths.storage_options)).input.get("datetime")
    except InputError:  # no manifest (the stage called on its own): no date
        acquired = None
    frame = write_fields(
        paths.fields,
        geometries,
        attributes,
        grid.crs,
        paths.storage_options,
        collection=collection_id(paths.root.rstrip("/").rsplit("/", 1)[-1]),
        determined=datetime.datetime.fromisoformat(acquired) if acquired else None,
    )
    return len(frame)
