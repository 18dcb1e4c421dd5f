"""The region flow: the run's pipeline with its stages as Prefect tasks on Dask workers.

    region_flow(["s3://imagery/county/"], "s3://maps/county", model="vit_b",
                scheduler="tcp://10.0.0.5:8786")

Deployment entrypoint: ``flows/region.py:region_flow``. The run itself is
`lisegagr_core.run.pipeline.run_pipeline`, the same as in one process; here its executor
submits each stage as a Prefect task (`tasks.STAGE_TASKS`: retries on transient errors,
names in the UI) and Dask places it (segmentation only on workers that declare the ``GPU``
resource). Finished tiles are found in the output store by their hash, so a re-run resumes
where the last one stopped, whichever executor wrote them.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import dask
from prefect import flow
from prefect.futures import as_completed

from flows.cluster import (
    WAIT_FOR_WORKERS_S,
    ClusterWatch,
    Placement,
    check_scheduler,
    dask_client,
)
from lisegagr_core.errors import LisegagrError
from lisegagr_core.run import RegionRun, RunManifest, TileStatus, run_pipeline
from lisegagr_core.run.assemble import RunRequest, claim_run
from lisegagr_core.run.pipeline import TileCallback
from lisegagr_core.run.stages import segment_batch
from tasks import STAGE_TASKS
from tasks.tiles import GPU
from tasks.worker_check import WorkerUnfit

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Where a local cluster's dashboard listens: loopback, a free port.
DASHBOARD_ADDRESS = "127.0.0.1:0"
# set-up of local workers: no traceback when a run's own scheduler closes (flows/local_worker.py)
LOCAL_WORKER_PRELOAD = "flows.local_worker"

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


class PrefectExecutor:
    """Each stage as its Prefect task, submitted to the flow's task runner (Dask).

    On Dask, segmentation is placed by `placement` (the resource it needs, how long to wait
    for a worker offering it) and watched (`flows.cluster.ClusterWatch`): while no connected
    worker can take it the run says so, and a worker that cannot segment is named and its
    tiles go to the others."""

    def __init__(self, placement: Placement | None = None, *, cpu_ok: bool = True) -> None:
        self.placement = placement or Placement()
        self.cpu_ok = cpu_ok

    def map(
        self, stage: Callable[..., T], jobs: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, T | BaseException]]:
        task, resources = STAGE_TASKS[stage]
        client = dask_client() if stage is segment_batch else None
        if client is not None:
            watch = ClusterWatch(client, self.placement, cpu_ok=self.cpu_ok)
            yield from self._watched(task, jobs, watch)
            return
        futures = {}
        with dask.annotate(resources=resources) if resources else contextlib.nullcontext():
            for index, job in enumerate(jobs):
                futures[task.submit(*job)] = index
        for future in as_completed(list(futures)):
            try:
                yield futures[future], future.result()
            except Exception as exc:  # reported to the pipeline, which records it
                yield futures[future], exc

    def _watched(
        self, task: Any, jobs: Sequence[tuple[Any, ...]], watch: ClusterWatch
    ) -> Iterator[tuple[int, Any]]:
        """Segmentation on a watched cluster: resources decided by the cluster, a batch refused
        by an unfit worker sent again to the workers that can, no silent wait."""
        resources = watch.decide_resources()
        futures: dict[Any, int] = {}

        def submit(index: int, workers: list[str] | None = None) -> None:
            annotations: dict[str, Any] = {"resources": resources} if resources else {}
            if workers is not None:
                annotations.update(workers=workers, allow_other_workers=False)
            with dask.annotate(**annotations):
                futures[task.submit(*jobs[index])] = index

        for index in range(len(jobs)):
            submit(index)
        refused: list[int] = []
        try:
            while futures or refused:
                if refused and (capable := watch.capable()):
                    for index in refused:
                        submit(index, capable)
                    refused = []
                if not futures:
                    watch.check()
                    time.sleep(self.placement.poll_s)
                    continue
                done = _first_done(list(futures), self.placement.poll_s)
                if not done:
                    watch.check()
                    continue
                for future in done:
                    index = futures.pop(future)
                    try:
                        result = future.result()
                    except WorkerUnfit as exc:
                        watch.refuse(exc.worker, str(exc))
                        refused.append(index)
                        continue
                    except Exception as exc:  # reported to the pipeline, which records it
                        result = exc
                    watch.progressed()
                    yield index, result
        except BaseException:
            for future in futures:  # nothing of this run stays queued on a shared cluster
                with contextlib.suppress(Exception):
                    future.wrapped_future.cancel()
            raise

    def call(self, stage: Callable[..., T], *args: Any) -> T:
        task, resources = STAGE_TASKS[stage]
        with dask.annotate(resources=resources) if resources else contextlib.nullcontext():
            future = task.submit(*args)
        result: T = future.result()
        return result


class _OneSentenceErrors(logging.Filter):
    """Keeps a flow's one-sentence errors (LisegagrError) off the console: the command says
    them itself, without Prefect's traceback. The Prefect API still records them."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, LisegagrError)


@contextlib.contextmanager
def one_sentence_errors() -> Iterator[None]:
    """Within: the console's log handlers (Prefect's, or the command's own) leave out the
    records of LisegagrErrors, which the command says itself in one sentence."""
    handlers = [
        handler
        for logger in (logging.getLogger(), logging.getLogger("prefect"))
        for handler in logger.handlers
        if type(handler).__name__ != "APILogHandler"
    ]
    quiet = _OneSentenceErrors()
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(quiet)


def _first_done(futures: list[Any], timeout: float) -> list[Any]:
    """The Prefect-on-Dask futures done within `timeout` seconds (none: an empty list)."""
    import distributed

    wrapped = {future.wrapped_future: future for future in futures}
    client = next(iter(wrapped)).client
    try:
        with client.as_current():
            finished = distributed.wait(
                list(wrapped), timeout=timeout, return_when="FIRST_COMPLETED"
            )
    except TimeoutError:
        return []
    return [wrapped[f] for f in finished.done]


@flow(name="lisegagr-map-region", flow_run_name="map {run.paths.root}", validate_parameters=False)
def map_region(run: RegionRun, placement: Placement | None = None) -> RunManifest:
    """Map one planned region with the current task runner; returns the run's manifest.

    `placement`: the resource segmentation needs and how long to wait for a worker offering
    it (default: `auto`, `flows.cluster.WAIT_FOR_WORKERS_S`)."""
    device = str(run.device or "")
    executor = PrefectExecutor(placement, cpu_ok=not device.startswith("cuda"))
    return run_pipeline(run, executor, _notify)


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
                    "preload": [LOCAL_WORKER_PRELOAD],
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
            "preload": [LOCAL_WORKER_PRELOAD],
        },
    )


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
    segmentation_resource: str = "auto",
    wait_for_workers: float = WAIT_FOR_WORKERS_S,
) -> RunManifest:
    """Map the fields of `sources` into `out` (see the module docstring). The run is assembled
    and its output claimed (`claim_run`) before the cluster starts."""
    if scheduler:
        check_scheduler(scheduler)
    request = RunRequest(
        sources,
        out,
        config,
        overrides or {},
        model=model,
        weights_dir=weights_dir,
        device=device,
        classify=classify,
    )
    placement = Placement(
        segmentation_resource, wait_for_workers, resume_hint=f"lisegagr resume {out}"
    )
    with claim_run(request) as run:
        manifest: RunManifest = map_region.with_options(
            task_runner=task_runner(scheduler, workers)
        )(run, placement)
    return manifest
