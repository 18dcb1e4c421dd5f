"""The region flow: plan → per tile (hash, segment on GPU workers) → merge → write → vectorise.

    region_flow(["s3://imagery/county/"], "s3://maps/county", model="vit_b",
                scheduler="tcp://10.0.0.5:8786")

Deployment entrypoint: ``flows/region.py:region_flow``. The flow composes tasks; the tasks
wrap `lisegagr_core`; Dask decides where each task runs (segmentation only on workers that
declare the ``GPU`` resource) and Prefect caches each tile's segmentation by its hash, so a
re-run resumes where the last one stopped.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import dask
from prefect import flow
from prefect.futures import PrefectFuture, as_completed
from prefect.states import State

from lisegagr_core.config import RegionConfig, load_region_config
from lisegagr_core.grid import TileGrid
from lisegagr_core.rasters import RasterSet, absolute_sources, open_rasters
from lisegagr_core.region import (
    RegionPaths,
    RunLock,
    TileStatus,
    classes_by_id,
    classifier_sha256,
    plan,
    write_manifest,
)
from lisegagr_core.source_specs import SamSpec, SourceSpec, spec_record
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR
from tasks.mosaic import (
    attributes_task,
    create_mosaic_task,
    merge_tiles,
    vectorise,
    write_tile_core,
)
from tasks.tiles import GPU, classify_tile, hash_tile, segment_tiles

log = logging.getLogger(__name__)

#: Where a local cluster's dashboard listens: loopback, a free port.
DASHBOARD_ADDRESS = "127.0.0.1:0"

#: Called with each tile's status as it finishes (progress bars).
TileCallback = Callable[[TileStatus], None]

# Listeners live here, not in the flow's parameters or globals: Prefect ships the flow (its
# function, by value) and its parameters to the workers, and a progress bar cannot travel.
_tile_listeners: list[TileCallback] = []


def _notify(status: TileStatus) -> None:
    for listener in _tile_listeners:
        listener(status)


@contextlib.contextmanager
def listening_to_tiles(callback: TileCallback) -> Iterator[None]:
    """Call `callback` with each tile's status as `map_region` in this process collects it."""
    _tile_listeners.append(callback)
    try:
        yield
    finally:
        _tile_listeners.remove(callback)


def _statuses_of(
    keys: list[str],
    segmented: PrefectFuture[list[TileStatus]],
    hashed: list[PrefectFuture[str | None]],
) -> list[TileStatus]:
    """The tiles' statuses from their tasks' final states: cached, computed, empty or failed.

    A failed task fails each of its tiles; a tile whose hash task failed (its pixels could
    not be read) carries the read error, the others the segmentation's (with
    `tiles_per_task` > 1 an unreadable tile thus fails its batch; `resume` redoes them).
    """
    segmented.wait()  # the final state from the worker, not the API's possibly older copy
    state: State[list[TileStatus]] = segmented.state
    if state.is_completed():
        statuses = segmented.result()
        for status in statuses:
            if state.name == "Cached" and status.status == "computed":
                status.status = "cached"
        return statuses
    error = state.message or state.name
    try:
        segmented.result()
    except Exception as exc:
        error = f"{exc.__class__.__name__}: {exc}"
    failed = []
    for key, digest in zip(keys, hashed, strict=True):
        try:
            digest.result()
            failed.append(TileStatus(key, "failed", error=error))
        except Exception as exc:
            failed.append(TileStatus(key, "failed", error=f"{exc.__class__.__name__}: {exc}"))
    return failed


@flow(name="lisegagr-map-region", flow_run_name="map {out}", validate_parameters=False)
def map_region(
    sources: list[str],
    out: str,
    config: RegionConfig,
    source: SourceSpec,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Map one region with the current task runner; returns the run's summary.

    storage_options: fsspec options for the sources (credentials, endpoints); by default
    each filesystem reads its usual settings (AWS_* for s3://).
    """
    started = time.perf_counter()
    paths = RegionPaths(out)
    rasters = open_rasters(
        sources,
        bands=config.bands,
        upscale=config.upscale,
        upscale_model=config.upscale_model,
        align=config.core,
        storage_options=storage_options,
    )
    grid = plan(rasters, config)
    model = source.describe()
    statuses: dict[str, TileStatus] = {spec.key: TileStatus(spec.key, "pending") for spec in grid}
    recorded = {"sources": absolute_sources(sources), "run": spec_record(source)}
    with RunLock(paths):
        write_manifest(
            paths, config, rasters, grid, model, statuses, {**recorded, "state": "running"}
        )
        futures: dict[PrefectFuture[list[TileStatus]], list[str]] = {}
        hashes: dict[str, PrefectFuture[str | None]] = {}
        specs = list(grid)
        for start in range(0, len(specs), config.tiles_per_task):
            batch = specs[start : start + config.tiles_per_task]
            for spec in batch:
                hashes[spec.key] = hash_tile.submit(rasters, spec, config, source.model_id)
            digests = [hashes[spec.key] for spec in batch]
            with dask.annotate(resources=GPU):
                segmented = segment_tiles.submit(
                    rasters, batch, cast(Any, digests), config, source, paths
                )
            futures[segmented] = [spec.key for spec in batch]
        last_manifest = time.monotonic()
        for future in as_completed(list(futures)):
            keys = futures[future]
            for status in _statuses_of(keys, future, [hashes[key] for key in keys]):
                statuses[status.key] = status
                _notify(status)
            if time.monotonic() - last_manifest > 10:
                write_manifest(
                    paths,
                    config,
                    rasters,
                    grid,
                    model,
                    statuses,
                    {**recorded, "state": "running"},
                )
                last_manifest = time.monotonic()

        field_scores = _classify(rasters, grid, statuses, config, paths)
        ids = merge_tiles.submit(grid, statuses, config, paths).result()
        attributes = attributes_task.submit(
            grid, statuses, ids, paths, model, field_scores
        ).result()
        create_mosaic_task.submit(rasters, grid, paths).result()
        lookup = classes_by_id(attributes, ids.count)
        writes = [
            write_tile_core.submit(spec, statuses[spec.key], ids.maps.get(spec.key), lookup, paths)
            for spec in grid
        ]
        for write in writes:
            write.result()
        fields = vectorise.submit(rasters, grid, attributes, paths).result()
        counts = {
            s: sum(1 for t in statuses.values() if t.status == s)
            for s in ("computed", "cached", "empty", "failed")
        }
        summary = {
            **recorded,
            "model": model,
            "state": "failed tiles" if counts["failed"] else "complete",
            "fields": fields,
            "counts": counts,
            "seconds": round(time.perf_counter() - started, 1),
        }
        write_manifest(paths, config, rasters, grid, model, statuses, summary)
    return {**summary, "statuses": {k: v.__dict__ for k, v in statuses.items()}, "out": out}


def _classify(
    rasters: RasterSet,
    grid: TileGrid,
    statuses: Mapping[str, TileStatus],
    config: RegionConfig,
    paths: RegionPaths,
) -> dict[str, dict[int, float]]:
    """Field scores of every segmented tile (GPU tasks), or none without a classifier."""
    if not config.classifier:
        log.warning("no classifier configured: instances are written as unclassified")
        return {}
    classifier_hash = classifier_sha256(config.classifier)
    futures = {}
    for spec in grid:
        digest = statuses[spec.key].tile_hash
        if digest is not None and statuses[spec.key].status != "failed":
            with dask.annotate(resources=GPU):
                futures[spec.key] = classify_tile.submit(
                    rasters, spec, digest, config.classifier, classifier_hash, paths
                )
    return {key: future.result() for key, future in futures.items()}


def task_runner(scheduler: str | None = None, workers: int | None = None) -> Any:
    """Dask for the tasks: an existing scheduler, else a local cluster sized to this machine.

    Local workers each declare one ``GPU`` slot: on a machine with CUDA GPUs one worker per GPU
    (dask-cuda's LocalCUDACluster when installed), on a CPU-only machine one per core pair,
    so that segmentation (annotated ``GPU=1``) runs one tile per worker at a time.
    """
    from prefect_dask import DaskTaskRunner

    if scheduler:
        return DaskTaskRunner(address=scheduler)
    import os

    import torch

    if torch.cuda.is_available():
        try:
            import dask_cuda  # noqa: F401

            return DaskTaskRunner(
                cluster_class="dask_cuda.LocalCUDACluster",
                cluster_kwargs={
                    "resources": GPU,
                    "threads_per_worker": 2,
                    "dashboard_address": DASHBOARD_ADDRESS,
                },
            )
        except ImportError:
            workers = workers or torch.cuda.device_count()
    n = workers or max(1, (os.cpu_count() or 2) // 2)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": n,
            "threads_per_worker": 1,
            "processes": True,
            "resources": GPU,
            # a free loopback port: no "port 8787 is in use" warning, nothing on 0.0.0.0
            "dashboard_address": DASHBOARD_ADDRESS,
        },
    )


def sam_source(
    model: str | None, weights_dir: str | None, device: str | None
) -> tuple[SamSpec, dict[str, Any]]:
    """The SAM spec for a model name or path, and the settings recorded with the model.

    The checkpoint is loaded and checked here, before any cluster starts."""
    from lisegagr_core.models import load_sam, model_description
    from lisegagr_core.weights import Manifest

    folder = Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS_DIR
    manifest = Manifest.load(folder / "manifest.json")
    name = model or default_model(folder, manifest)
    sam = load_sam(name, weights_dir=folder, manifest=manifest, device="cpu")
    spec = SamSpec(
        name, str(folder.absolute()), sam.checkpoint_sha256, model_description(sam), device
    )
    return spec, {"amg": dict(sam.settings)}


def default_model(weights_dir: Path, manifest: Any) -> str:
    """Meta's vit_b when its checkpoint is present, else the manifest's default."""
    vit_b = manifest.entries.get("vit_b")
    if vit_b is not None and (weights_dir / vit_b.filename).exists():
        return "vit_b"
    return str(manifest.default)


def with_default_classifier(
    config: RegionConfig, weights_dir: str | None, *, enabled: bool = True
) -> RegionConfig:
    """`config` with the manifest's default classifier when it names none; without one when
    not `enabled`. A shipped classifier that is missing or altered raises WeightsError."""
    from lisegagr_core.weights import default_classifier

    if not enabled:
        return config.model_copy(update={"classifier": None})
    if config.classifier:
        return config
    path = default_classifier(Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS_DIR)
    return config if path is None else config.model_copy(update={"classifier": str(path)})


@flow(name="lisegagr-region", flow_run_name="region {out}")
def region_flow(
    sources: list[str],
    out: str,
    config: str | None = None,
    model: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    device: str | None = None,
    weights_dir: str | None = None,
    overrides: dict[str, Any] | None = None,
    classify: bool = True,
) -> dict[str, Any]:
    """Map the fields of `sources` into `out` (see the module docstring)."""
    source, settings = sam_source(model, weights_dir, device)
    region_config = load_region_config(config, overrides, model_settings=settings)
    region_config = with_default_classifier(region_config, weights_dir, enabled=classify)
    return map_region.with_options(task_runner=task_runner(scheduler, workers))(
        sources, out, region_config, source
    )
