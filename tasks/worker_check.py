"""Whether this Dask worker can segment a run's tiles: its lisegagr, the model file, its bytes.

A worker that cannot raises `WorkerUnfit` (one sentence naming it) before any tile is read; the
flow's executor names the worker once and sends the tiles to workers that can. What the mask
source needs here (a SAM: its checkpoint, with the run's sha256) is its own
`unavailable_here`; the checkpoint is hashed once per process (`weights.sha256_file`).
"""

from __future__ import annotations

from typing import Any

from lisegagr_core.errors import LisegagrError
from lisegagr_core.run.plan import RegionRun, installed_version


class WorkerUnfit(LisegagrError):
    """This worker cannot segment the run's tiles; `worker` is its address."""

    def __init__(self, worker: str, reason: str) -> None:
        super().__init__(reason)
        self.worker = worker

    def __reduce__(self) -> tuple[Any, ...]:
        return (WorkerUnfit, (self.worker, str(self)))


def this_worker() -> tuple[str, str] | None:
    """(address, how to name it) of the Dask worker running this code; None outside one."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    name = str(worker.name)
    shown = worker.address if name == worker.address else f"{name} ({worker.address})"
    return worker.address, shown


def worker_problem(run: RegionRun, worker: str = "this worker") -> str | None:
    """One sentence saying why `worker` (this process) cannot segment `run`'s tiles, or None."""
    mine = installed_version()
    if run.lisegagr_version != mine:
        return (
            f"worker {worker} cannot segment: it runs lisegagr {mine} and the run lisegagr "
            f"{run.lisegagr_version} (install the same version on every worker)"
        )
    problem = run.source.unavailable_here()
    return None if problem is None else f"worker {worker} cannot segment: {problem}"


def check_this_worker(run: RegionRun) -> None:
    """Raise WorkerUnfit when this Dask worker cannot segment `run` (nothing outside Dask)."""
    worker = this_worker()
    if worker is None:
        return
    address, shown = worker
    problem = worker_problem(run, shown)
    if problem is not None:
        raise WorkerUnfit(address, problem)
