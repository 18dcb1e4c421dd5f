"""The per-tile task: a batch of tiles read, hashed, segmented and classified on a GPU worker.

The stage itself (`lisegagr_core.run.stages.segment_batch`) decides what is cached: a tile
whose result is in the output store under its hash is not computed again, whoever wrote it.
So Prefect's own result cache is off here; Prefect retries transient failures, Dask places
the task on a worker that declares the ``GPU`` resource.
"""

from __future__ import annotations

from collections.abc import Sequence

from lisegagr_core.grid import TileSpec
from lisegagr_core.run.manifest import TileStatus
from lisegagr_core.run.plan import RegionRun
from lisegagr_core.run.stages import segment_batch
from tasks.retries import retried_task
from tasks.worker_check import check_this_worker, this_worker

#: Resource annotation of tasks that need an accelerator (workers: `--resources GPU=1`).
GPU = {"GPU": 1}


def _batch_name() -> str:
    from prefect.runtime import task_run

    specs = task_run.parameters["specs"]
    more = f" +{len(specs) - 1}" if len(specs) > 1 else ""
    return f"segment {specs[0].key}{more}"


def segment_on_worker(run: RegionRun, specs: Sequence[TileSpec]) -> list[TileStatus]:
    """`segment_batch`, on a worker that can do it (else WorkerUnfit, before any read); each
    status names the Dask worker (its address) that computed it."""
    check_this_worker(run)
    statuses = segment_batch(run, specs)
    worker = this_worker()
    if worker is not None:
        for status in statuses:
            status.worker = worker[0]
    return statuses


segment_batch_task = retried_task(segment_on_worker, "segment-tiles", task_run_name=_batch_name)
