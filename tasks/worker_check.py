"""Whether this Dask worker can segment a run's tiles: its lisegagr, the model file, its bytes.

A worker that cannot raises `WorkerUnfit` (one sentence naming it) before any tile is read; the
flow's executor names the worker once and sends the tiles to workers that can. The answer is
kept per process (the checkpoint is hashed once, not per task).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from lisegagr_core.errors import LisegagrError
from lisegagr_core.run.pipeline import RegionRun, installed_version

_ANSWERS: dict[tuple[Any, ...], str | None] = {}
_LOCK = threading.Lock()


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
    from lisegagr_core.source_specs import SamSpec
    from lisegagr_core.standins.ground_truth import GroundTruthSpec

    mine = installed_version()
    if run.lisegagr_version != mine:
        return (
            f"worker {worker} cannot segment: it runs lisegagr {mine} and the run lisegagr "
            f"{run.lisegagr_version} (install the same version on every worker)"
        )
    spec = run.source
    if isinstance(spec, SamSpec):
        _, _, path = spec.checkpoint()
        if path is None:
            return None
        if not path.is_file():
            looked = " nor ".join(str(place[2]) for place in spec.checkpoint_places())
            return (
                f"worker {worker} cannot segment: it has no model file {looked} (copy the "
                "run's checkpoint there, or set LISEGAGR_WEIGHTS_DIR on the worker to a "
                "folder holding it)"
            )
        found = _sha256(path)
        if found != spec.checkpoint_sha256:
            return (
                f"worker {worker} cannot segment: its model file {path} has sha256 "
                f"{found[:12]}…, not the run's {spec.checkpoint_sha256[:12]}… (copy the run's "
                "checkpoint there)"
            )
    elif isinstance(spec, GroundTruthSpec) and not Path(spec.truth_path).is_file():
        return f"worker {worker} cannot segment: it has no ground-truth raster {spec.truth_path}"
    return None


def _sha256(path: Path) -> str:
    from lisegagr_core.weights import sha256_file

    stat = path.stat()
    key = ("sha256", str(path), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key not in _ANSWERS:
            _ANSWERS[key] = sha256_file(path)
        return str(_ANSWERS[key])


def check_this_worker(run: RegionRun) -> None:
    """Raise WorkerUnfit when this Dask worker cannot segment `run` (nothing outside Dask)."""
    worker = this_worker()
    if worker is None:
        return
    address, shown = worker
    problem = worker_problem(run, shown)
    if problem is not None:
        raise WorkerUnfit(address, problem)
