"""A region run, as stages: plan → per tile (read, hash, segment) → merge → write → vectorise.

Each stage is a plain function over values and the run's output folder, so the Prefect flow
can place them on workers, cache them by tile hash and retry them, while `run_region` here
composes them in one process (notebooks, tests, a single machine).

The output folder (local or any fsspec URL) holds:

- ``mosaic.zarr``: labels and classes, see `mosaic`;
- ``fields.parquet``: one polygon per field (GeoParquet);
- ``tiles/<key>.<hash>.npz``: each tile's segmentation, the cache a re-run resumes from;
- ``manifest.json``: settings, input, model, per-tile status, hashes and timings.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pandas as pd
from numpy.typing import NDArray

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
    write_cog,
    write_core,
    write_fields,
)
from lisegagr_core.rasters import RasterSet
from lisegagr_core.sources import MaskSource
from lisegagr_core.storage import check_writable
from lisegagr_core.tiles import (
    TileImage,
    TileResult,
    load_tile_result,
    read_tile,
    save_tile_result,
    segment_tiles,
    tile_hash,
)

log = logging.getLogger(__name__)

#: Instances whose area-weighted field score reaches this are fields (class 1), else 2.
FIELD_THRESHOLD = 0.5

#: The mask source for a tile (SAM ignores the tile; a ground-truth source crops to it).
SourceForTile = Callable[[TileSpec], MaskSource]


@dataclass(frozen=True)
class RegionPaths:
    """Where a run's outputs live, under one folder or URL."""

    root: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def mosaic(self) -> str:
        return self.join("mosaic.zarr")

    @property
    def fields(self) -> str:
        return self.join("fields.parquet")

    @property
    def manifest(self) -> str:
        return self.join("manifest.json")

    def tile(self, key: str, digest: str) -> str:
        return self.join("tiles", f"{key}.{digest[:16]}.npz")

    def scores(self, key: str, digest: str, classifier_hash: str) -> str:
        return self.join("scores", f"{key}.{digest[:16]}.{classifier_hash[:16]}.json")

    def exists(self, url: str) -> bool:
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        return bool(fs.exists(path))

    def write_text(self, url: str, text: str) -> None:
        fs, path = fsspec.core.url_to_fs(url, **self.storage_options)
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(path, "w") as stream:
            stream.write(text)


@dataclass
class TileStatus:
    """What happened to one tile in this run."""

    key: str
    status: str  # "computed", "cached", "empty" or "failed"
    tile_hash: str | None = None
    instances: int = 0
    seconds: float = 0.0
    error: str | None = None
    worker: str | None = None


def plan(rasters: RasterSet, config: RegionConfig) -> TileGrid:
    """The tile grid over the region's output grid."""
    return TileGrid(
        rasters.height,
        rasters.width,
        core=config.core,
        halo=config.halo,
        origin_tile=rasters.origin_tile,
    )


def hash_stage(
    rasters: RasterSet, spec: TileSpec, config: RegionConfig, model_id: str
) -> tuple[TileImage, str | None]:
    """Read a tile and its hash (None for a tile without a single valid pixel)."""
    tile = read_tile(rasters, spec)
    return tile, None if tile.empty else tile_hash(tile, config.segmentation_settings(model_id))


def segment_stage(
    tile: TileImage, digest: str, source: MaskSource, config: RegionConfig, paths: RegionPaths
) -> TileStatus:
    """Segment a hashed tile and store the result, unless a result of that hash is stored."""
    return segment_stage_many([tile], [digest], source, config, paths)[0]


def segment_stage_many(
    tiles: Sequence[TileImage],
    digests: Sequence[str],
    source: MaskSource,
    config: RegionConfig,
    paths: RegionPaths,
) -> list[TileStatus]:
    """`segment_stage` for several tiles: those not stored are segmented together."""
    started = time.perf_counter()
    urls = [paths.tile(t.spec.key, d) for t, d in zip(tiles, digests, strict=True)]
    stored = [paths.exists(url) for url in urls]
    todo = [i for i, done in enumerate(stored) if not done]
    results = segment_tiles(
        [tiles[i] for i in todo], source, config.engine, [digests[i] for i in todo]
    )
    for i, result in zip(todo, results, strict=True):
        save_tile_result(urls[i], result, dict(paths.storage_options))
    computed = dict(zip(todo, results, strict=True))
    statuses = []
    for i, (tile, digest) in enumerate(zip(tiles, digests, strict=True)):
        if i in computed:
            result = computed[i]
            statuses.append(
                TileStatus(tile.spec.key, "computed", digest, len(result.instances), result.seconds)
            )
        else:
            seconds = time.perf_counter() - started
            statuses.append(TileStatus(tile.spec.key, "cached", digest, seconds=seconds))
    return statuses


def process_tile(
    rasters: RasterSet,
    spec: TileSpec,
    source: MaskSource,
    config: RegionConfig,
    model_id: str,
    paths: RegionPaths,
) -> TileStatus:
    """Read, hash and (unless its result is already stored) segment one tile."""
    tile, digest = hash_stage(rasters, spec, config, model_id)
    if digest is None:
        return TileStatus(spec.key, "empty")
    return segment_stage(tile, digest, source, config, paths)


class TileResults:
    """Stored tile results by key, loaded on demand with a small cache (bounded memory)."""

    def __init__(self, paths: RegionPaths, statuses: Mapping[str, TileStatus], keep: int = 16):
        self.paths, self.statuses, self.keep = paths, statuses, keep
        self._cache: dict[str, TileResult] = {}

    def get(self, key: str) -> TileResult | None:
        status = self.statuses.get(key)
        if status is None or status.tile_hash is None:
            return None
        if key not in self._cache:
            if len(self._cache) >= self.keep:
                self._cache.pop(next(iter(self._cache)))
            url = self.paths.tile(key, status.tile_hash)
            self._cache[key] = load_tile_result(url, dict(self.paths.storage_options))
        return self._cache[key]


def merge(grid: TileGrid, results: TileResults, config: RegionConfig) -> GlobalIds:
    """Global ids for every tile's instances, from the strips neighbouring tiles share."""
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


def create_region_mosaic(rasters: RasterSet, grid: TileGrid, paths: RegionPaths) -> None:
    """The empty mosaic of the region's grid, chunked by its tile core."""
    create_mosaic(
        paths.mosaic,
        height=grid.height,
        width=grid.width,
        core=grid.core,
        crs=rasters.crs,
        transform=rasters.transform,
        storage_options=paths.storage_options,
    )


def write_tile(
    group: Any,
    spec: TileSpec,
    result: TileResult | None,
    ids: GlobalIds,
    classes_by_id: NDArray[np.uint8] | None = None,
) -> None:
    """Write a tile's core with global ids, and its classes: 0 background, 1 field,
    2 non-field, 3 unclassified (from `classes_by_id`, indexed by global id), 255 nodata."""
    rows, cols = spec.tile_slices(spec.core)
    if result is None:
        shape = (int(spec.core.height), int(spec.core.width))
        write_core(group, spec, np.zeros(shape, np.uint32), np.full(shape, CLASS_NODATA, np.uint8))
        return
    labels = ids.maps[spec.key][result.labels[rows, cols]]
    valid = result.valid[rows, cols]
    instance_class = (
        classes_by_id[labels] if classes_by_id is not None else np.uint8(CLASS_UNCLASSIFIED)
    )
    classes = np.where(labels > 0, instance_class, np.where(valid, CLASS_NONE, CLASS_NODATA))
    write_core(group, spec, labels, classes.astype(np.uint8))


def instance_attributes(
    grid: TileGrid,
    results: TileResults,
    ids: GlobalIds,
    field_scores: Mapping[str, Mapping[int, float]] | None = None,
) -> pd.DataFrame:
    """Per global id: provenance (tiles and their hashes), SAM's scores and the field score,
    each weighted by the area of the instance's pieces in the tile cores.

    field_scores: tile key → local id → P(field); without them every instance is unclassified.
    """
    rows: list[dict[str, Any]] = []
    for spec in grid:
        result = results.get(spec.key)
        if result is None:
            continue
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
                        "field_score": (field_scores or {}).get(spec.key, {}).get(instance.id),
                    }
                )
    columns = ["predicted_iou", "stability_score", "stage", "tiles", "class", "field_score"]
    if not rows:
        return pd.DataFrame(columns=columns)
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
    return attributes[columns]


def classes_by_id(attributes: pd.DataFrame, count: int) -> NDArray[np.uint8]:
    """(count + 1,) uint8 class of each global id (index 0 unused), for the classes raster."""
    lookup = np.full(count + 1, CLASS_UNCLASSIFIED, np.uint8)
    if len(attributes):
        lookup[attributes.index.to_numpy(np.int64)] = attributes["class"].to_numpy(np.uint8)
    return lookup


@functools.cache
def _loaded_classifier(path: str, device: str | None) -> tuple[Any, str]:
    """The classifier of a file and its weights' sha256, loaded once per process."""
    from lisegagr_core.classify import load_classifier

    classifier, header = load_classifier(path, device=device)
    return classifier, str(header["sha256"])


def classifier_sha256(path: str) -> str:
    return _loaded_classifier(path, None)[1]


def classify_stage(
    rasters: RasterSet,
    spec: TileSpec,
    digest: str,
    classifier_path: str,
    paths: RegionPaths,
    device: str | None = None,
) -> dict[int, float]:
    """P(field) of every instance of a segmented tile, stored beside its labels.

    Keyed by tile hash and classifier hash: a new classifier recomputes only this stage.
    """
    from lisegagr_core.classify import classify_instances

    classifier, classifier_hash = _loaded_classifier(classifier_path, device)
    url = paths.scores(spec.key, digest, classifier_hash)
    if paths.exists(url):
        fs, path = fsspec.core.url_to_fs(url, **paths.storage_options)
        with fs.open(path, "r") as stream:
            return {int(k): float(v) for k, v in json.load(stream).items()}
    tile = read_tile(rasters, spec)
    result = load_tile_result(paths.tile(spec.key, digest), dict(paths.storage_options))
    scores = classify_instances(tile.rgb, result.labels, classifier)
    paths.write_text(url, json.dumps({str(k): v for k, v in scores.items()}))
    return scores


@dataclass
class RegionReport:
    """The outcome of a run: per-tile statuses, counts and where the outputs are."""

    statuses: dict[str, TileStatus]
    fields: int
    seconds: float
    paths: RegionPaths
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def failed(self) -> list[TileStatus]:
        return [s for s in self.statuses.values() if s.status == "failed"]


def write_manifest(
    paths: RegionPaths,
    config: RegionConfig,
    rasters: RasterSet,
    grid: TileGrid,
    model: str,
    statuses: Mapping[str, TileStatus],
    extra: Mapping[str, Any] | None = None,
) -> None:
    manifest = {
        "config": config.model_dump(mode="json"),
        "input": rasters.describe(),
        "grid": {"rows": grid.rows, "cols": grid.cols, "core": grid.core, "halo": grid.halo},
        "model": model,
        "tiles": {k: s.__dict__ for k, s in statuses.items()},
        **(extra or {}),
    }
    paths.write_text(paths.manifest, json.dumps(manifest, indent=2) + "\n")


def run_region(
    rasters: RasterSet,
    source_for: SourceForTile,
    config: RegionConfig,
    paths: RegionPaths,
    *,
    model_id: str,
    model: str,
    on_tile: Callable[[TileStatus], None] | None = None,
) -> RegionReport:
    """The whole run in this process; a tile that fails is recorded and left as nodata."""
    started = time.perf_counter()
    clock = _StageClock()
    grid = plan(rasters, config)
    statuses: dict[str, TileStatus] = {}
    with clock("tiles"):
        for spec in grid:
            try:
                status = process_tile(rasters, spec, source_for(spec), config, model_id, paths)
            except Exception as exc:  # recorded in the manifest, the run goes on
                log.exception("tile %s failed", spec.key)
                status = TileStatus(spec.key, "failed", error=f"{exc.__class__.__name__}: {exc}")
            statuses[spec.key] = status
            if on_tile is not None:
                on_tile(status)
    results = TileResults(paths, statuses, keep=2 * grid.cols + 4)
    scores: dict[str, dict[int, float]] = {}
    if config.classifier:
        with clock("classify"):
            for spec in grid:
                status = statuses[spec.key]
                if status.tile_hash is not None and status.status != "failed":
                    scores[spec.key] = classify_stage(
                        rasters, spec, status.tile_hash, config.classifier, paths
                    )
    else:
        log.warning("no classifier configured: instances are written as unclassified")
    with clock("merge"):
        ids = merge(grid, results, config)
        attributes = instance_attributes(grid, results, ids, scores)
        attributes["model"] = model
    with clock("write"):
        create_region_mosaic(rasters, grid, paths)
        group = open_mosaic(paths.mosaic, paths.storage_options)
        lookup = classes_by_id(attributes, ids.count)
        for spec in grid:
            write_tile(group, spec, results.get(spec.key), ids, lookup)
    with clock("vectorise"):
        geometries = vectorise_mosaic(group, grid, rasters.transform)
        write_fields(paths.fields, geometries, attributes, rasters.crs, paths.storage_options)
    write_manifest(
        paths,
        config,
        rasters,
        grid,
        model,
        statuses,
        {"fields": ids.count, "stage_seconds": clock.seconds},
    )
    return RegionReport(statuses, ids.count, time.perf_counter() - started, paths, clock.seconds)


class _StageClock:
    """Wall time per named stage: ``with clock("merge"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 3)


class RunLock:
    """One run at a time per output: a lock file naming the holder (host, pid, start).

    A lock left by a run that died on this host (its pid is gone) is taken over; a live
    holder, or one on another host, refuses the second run with one sentence.
    """

    def __init__(self, paths: RegionPaths) -> None:
        self.paths = paths
        self.url = paths.join(".lock")

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (host, pid, since), or None when nobody does."""
        if not self.paths.exists(self.url):
            return None
        fs, path = fsspec.core.url_to_fs(self.url, **self.paths.storage_options)
        with fs.open(path, "r") as stream:
            return dict(json.load(stream))

    @staticmethod
    def is_gone(holder: Mapping[str, Any]) -> bool:
        """Whether the holder is a run on this host whose process no longer exists."""
        import socket

        same_host = holder.get("host") == socket.gethostname()
        return same_host and not _pid_alive(int(holder.get("pid", -1)))

    def check(self) -> None:
        """Raise `InputError` when a live run (or one on another host) holds the lock."""
        holder = self.holder()
        if holder is not None and not self.is_gone(holder):
            raise InputError(
                f"{self.paths.root} is being written by another run (pid {holder.get('pid')} "
                f"on {holder.get('host')} since {holder.get('since')}); wait for it to "
                f"finish, or delete {self.url} if that run is gone."
            )

    def acquire(self) -> None:
        import os
        import socket

        self.check()
        holder = self.holder()
        if holder is not None:
            log.warning("taking over the lock of a run that is gone (pid %s)", holder.get("pid"))
        self.paths.write_text(
            self.url,
            json.dumps(
                {
                    "host": socket.gethostname(),
                    "pid": os.getpid(),
                    "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
            ),
        )

    def release(self) -> None:
        fs, path = fsspec.core.url_to_fs(self.url, **self.paths.storage_options)
        if fs.exists(path):
            fs.rm(path)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _pid_alive(pid: int) -> bool:
    import os

    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def export_cogs(
    output: str, folder: str, storage_options: Mapping[str, Any] | None = None
) -> list[str]:
    """The run's `labels` and `classes` as Cloud-Optimised GeoTIFFs in `folder` (local or any
    fsspec URL), cut to the sources' extent on the mosaic's pixel grid; returns their URLs."""
    import tempfile
    from pathlib import Path

    from affine import Affine
    from rasterio.crs import CRS
    from rasterio.windows import Window

    paths = RegionPaths(output, dict(storage_options or {}))
    fs, manifest_path = fsspec.core.url_to_fs(paths.manifest, **paths.storage_options)
    with fs.open(manifest_path, "r") as stream:
        described = json.load(stream)["input"]
    height, width = described["shape"]
    window = Window(*described.get("data_window", [0, 0, width, height]))
    crs = CRS.from_wkt(described["crs"]) if described.get("crs") else None
    group = open_mosaic(paths.mosaic, paths.storage_options, mode="r")
    check_writable(folder, paths.storage_options)  # makes a local folder, never a bucket
    target_fs, target = fsspec.core.url_to_fs(folder, **paths.storage_options)
    written = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("labels", "classes"):
            local = str(Path(scratch) / f"{name}.tif")
            write_cog(group, name, local, window, Affine(*described["transform"]), crs)
            url = f"{folder.rstrip('/')}/{name}.tif"
            target_fs.put_file(local, f"{target.rstrip('/')}/{name}.tif")
            written.append(url)
    return written


def tile_statuses_on_disk(grid: TileGrid, paths: RegionPaths) -> dict[str, str]:
    """Tile key → hash prefix of every stored tile result (what a killed run left behind)."""
    fs, path = fsspec.core.url_to_fs(paths.join("tiles"), **paths.storage_options)
    if not fs.exists(path):
        return {}
    found: dict[str, str] = {}
    for name in fs.ls(path, detail=False):
        key, digest, *_ = name.rsplit("/", 1)[-1].split(".")
        found[key] = digest
    return found
