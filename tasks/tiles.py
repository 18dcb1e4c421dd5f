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
    segment_stage_many,
)
from lisegagr_core.source_specs import SourceSpec
from lisegagr_core.tiles import read_tile
from tasks.retries import retry_if_transient

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
    """The tiles' hashes, while every tile's stored result exists (else compute again).

    Prefect's cached record says "done"; the stored labels are what the merge needs. Checking
    both keeps a deleted or lost output folder from being reported as finished.
    """
    digests, specs, paths = parameters.get("digests"), parameters["specs"], parameters["paths"]
    if not digests or None in digests:
        return None
    if not all(paths.exists(paths.tile(s.key, d)) for s, d in zip(specs, digests, strict=True)):
        return None
    return "lisegagr-segment-" + "-".join(digests)


@task(
    name="hash-tile",
    task_run_name="hash {spec.key}",
    retries=3,
    retry_delay_seconds=[1, 4, 16],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def hash_tile(
    rasters: RasterSet, spec: TileSpec, config: RegionConfig, model_id: str
) -> str | None:
    """The tile's hash (None: no valid pixel). Retried: storage reads fail transiently."""
    return hash_stage(rasters, spec, config, model_id)[1]


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


def _batch_name() -> str:
    from prefect.runtime import task_run

    specs = task_run.parameters["specs"]
    more = f" +{len(specs) - 1}" if len(specs) > 1 else ""
    return f"segment {specs[0].key}{more}"


@task(
    name="segment-tiles",
    task_run_name=_batch_name,
    cache_key_fn=segment_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_if_transient,
)
def segment_tiles(
    rasters: RasterSet,
    specs: list[TileSpec],
    digests: list[str | None],
    config: RegionConfig,
    source: SourceSpec,
    paths: RegionPaths,
) -> list[TileStatus]:
    """Segment tiles on this worker's model, together (`RegionConfig.tiles_per_task`).

    Tiles without a valid pixel are "empty". On CUDA out-of-memory the prompt batch is
    halved and the tiles tried again.
    """
    statuses = {
        spec.key: TileStatus(spec.key, "empty")
        for spec, digest in zip(specs, digests, strict=True)
        if digest is None
    }
    todo = [(spec, d) for spec, d in zip(specs, digests, strict=True) if d is not None]
    tiles = [read_tile(rasters, spec) for spec, _ in todo]
    amg = config.engine.amg
    while todo:
        engine = config.engine.model_copy(update={"amg": amg})
        run_config = config.model_copy(update={"engine": engine})
        try:
            if len(todo) > 1 and source.shared_across_tiles:
                shared = source.build(todo[0][0], amg, rasters.transform)
                computed = segment_stage_many(
                    tiles, [d for _, d in todo], shared, run_config, paths
                )
            else:  # each tile its own source (ground truth), one at a time
                computed = [
                    segment_stage(
                        tile, digest, source.build(spec, amg, rasters.transform), run_config, paths
                    )
                    for tile, (spec, digest) in zip(tiles, todo, strict=True)
                ]
            statuses.update((s.key, s) for s in computed)
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
                ", ".join(spec.key for spec, _ in todo),
                amg.points_per_batch,
            )
    for status in statuses.values():
        status.worker = worker_name()
    return [statuses[spec.key] for spec in specs]


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
    retry_condition_fn=retry_if_transient,
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
