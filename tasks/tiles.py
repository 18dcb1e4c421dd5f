"""Per-tile tasks: hash (CPU) and segment (GPU), cached by tile hash.

The segmentation task's cache key is the tile hash itself, so a re-run, a resume or a
nightly run over unchanged imagery finds every finished tile in Prefect's result storage
and computes nothing again. Tasks hold no algorithm: `lisegagr_core.region` does the work.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from prefect import task
from prefect.context import TaskRunContext

from lisegagr_core.config import RegionConfig
from lisegagr_core.grid import TileSpec
from lisegagr_core.rasters import RasterSet
from lisegagr_core.region import (
    RegionPaths,
    TileStatus,
    classify_stage,
    hash_stage,
    segment_stage,
)
from lisegagr_core.source_specs import SourceSpec
from lisegagr_core.tiles import read_tile

log = logging.getLogger(__name__)

#: Resource annotation of tasks that need an accelerator (workers: `--resources GPU=1`).
GPU = {"GPU": 1}


def worker_name() -> str:
    """The Dask worker running this task (its address), or this process."""
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return f"pid:{os.getpid()}"


def segment_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """The tile hash, while the tile's stored result exists (else no cache: compute again).

    Prefect's cached record says "done"; the stored labels are what the merge needs. Checking
    both keeps a deleted or lost output folder from being reported as finished.
    """
    digest, spec, paths = parameters.get("digest"), parameters["spec"], parameters["paths"]
    if not digest or not paths.exists(paths.tile(spec.key, digest)):
        return None
    return f"lisegagr-segment-{digest}"


@task(
    name="hash-tile",
    task_run_name="hash {spec.key}",
    retries=3,
    retry_delay_seconds=[1, 4, 16],
    retry_jitter_factor=0.5,
)
def hash_tile(
    rasters: RasterSet, spec: TileSpec, config: RegionConfig, model_id: str
) -> str | None:
    """The tile's hash (None: no valid pixel). Retried: storage reads fail transiently."""
    return hash_stage(rasters, spec, config, model_id)[1]


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


@task(
    name="segment-tile",
    task_run_name="segment {spec.key}",
    cache_key_fn=segment_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
)
def segment_tile(
    rasters: RasterSet,
    spec: TileSpec,
    digest: str | None,
    config: RegionConfig,
    source: SourceSpec,
    paths: RegionPaths,
) -> TileStatus:
    """Segment one tile on this worker's model; on CUDA out-of-memory, halve the prompt batch."""
    if digest is None:
        return TileStatus(spec.key, "empty", worker=worker_name())
    tile = read_tile(rasters, spec)
    amg = config.engine.amg
    while True:
        engine = config.engine.model_copy(update={"amg": amg})
        try:
            status = segment_stage(
                tile,
                digest,
                source.build(spec, amg, rasters.transform),
                config.model_copy(update={"engine": engine}),
                paths,
            )
            break
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
                spec.key,
                amg.points_per_batch,
            )
    status.worker = worker_name()
    return status


def classify_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Tile hash + classifier hash, while the stored scores exist."""
    digest, spec, paths = parameters.get("digest"), parameters["spec"], parameters["paths"]
    classifier_hash = parameters["classifier_hash"]
    if not digest or not paths.exists(paths.scores(spec.key, digest, classifier_hash)):
        return None
    return f"lisegagr-classify-{digest}-{classifier_hash}"


@task(
    name="classify-tile",
    task_run_name="classify {spec.key}",
    cache_key_fn=classify_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
)
def classify_tile(
    rasters: RasterSet,
    spec: TileSpec,
    digest: str,
    classifier_path: str,
    classifier_hash: str,
    paths: RegionPaths,
) -> dict[int, float]:
    """P(field) of each instance of a segmented tile (cached by tile and classifier hash)."""
    return classify_stage(rasters, spec, digest, classifier_path, paths)
