"""What a run needs from a Dask cluster, checked and said in the operator's terms.

    check_scheduler("tcp://10.0.0.5:8786", timeout=10)   # before any server starts
    Placement(resource="auto", wait_s=600)                # travels with the flow

- An address with no scheduler behind it is refused in one sentence within a connect timeout.
- Segmentation needs a worker that offers its resource (``GPU=1`` by default; none for plain
  CPU workers, chosen by ``auto`` when the model may run on CPU and no worker offers ``GPU``).
  While no connected worker can take it, `ClusterWatch` says so in one line (what it waits
  for, how to provide it), and after ``wait_s`` stops the run, which stays resumable.
- A worker that cannot do the work (no model file, another checkpoint, another lisegagr) is
  named once; its tiles go to the workers that can (`tasks.worker_check`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from lisegagr_core.errors import InputError, LisegagrError

log = logging.getLogger(__name__)

#: Seconds to reach a scheduler before the run is refused (``--connect-timeout``).
CONNECT_TIMEOUT_S = 10.0
#: Seconds a run waits for a worker that can segment before it stops (``--wait-for-workers``).
WAIT_FOR_WORKERS_S = 600.0
#: Seconds between looks at the cluster while nothing finishes.
POLL_S = 1.0

#: The resource segmentation needs when nothing else is said: one GPU slot.
GPU_RESOURCE = {"GPU": 1}


class NoWorkers(LisegagrError):
    """No connected worker could take segmentation within the allowed wait."""


def parse_resource(text: str) -> dict[str, float] | None:
    """``auto`` → None (decided per run); ``none`` → {} (any worker); ``GPU`` or ``GPU=1`` or
    ``GPU=1,MEM=2`` → the Dask resources segmentation needs. Anything else: one sentence."""
    value = text.strip()
    if value.lower() == "auto":
        return None
    if value.lower() in ("none", "any", ""):
        return {}
    resources: dict[str, float] = {}
    for part in value.split(","):
        name, _, amount = part.strip().partition("=")
        try:
            number = float(amount) if amount else 1.0
        except ValueError:
            number = -1.0
        if not name.strip() or number <= 0:
            raise InputError(
                f"--segmentation-resource takes auto, none, or NAME[=AMOUNT] (e.g. GPU=1), "
                f"not {text!r}."
            )
        resources[name.strip()] = int(number) if number.is_integer() else number
    return resources


def describe_resources(resources: dict[str, float]) -> str:
    """``GPU=1``, as `dask worker --resources` takes it."""
    return ",".join(f"{k}={v:g}" for k, v in resources.items())


@dataclass(frozen=True)
class Placement:
    """Where segmentation may run and how long a run waits for such a worker (by value: it
    travels with the flow's parameters)."""

    resource: str = "auto"
    """``auto``, ``none``, or Dask resources as ``NAME=AMOUNT`` (see `parse_resource`)."""
    wait_s: float = WAIT_FOR_WORKERS_S
    poll_s: float = POLL_S
    resume_hint: str | None = None
    """The command that carries the run on (named in the stop sentence)."""


def check_scheduler(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise InputError, one sentence naming `address`, unless a Dask scheduler answers there
    within `timeout` seconds (TLS settings from Dask's configuration, as workers use them)."""
    from distributed.comm import connect, parse_address
    from distributed.comm.registry import get_backend

    try:
        scheme, _ = parse_address(address)
        get_backend(scheme)
    except ValueError:
        raise InputError(
            f"--scheduler {address!r} is not a Dask address; give it as tcp://HOST:PORT "
            "(or tls://HOST:PORT)."
        ) from None

    async def identity() -> dict[str, Any]:
        from distributed.security import Security

        args = Security().get_connection_args("client")
        comm = await connect(address, timeout=timeout, **args)
        try:
            await comm.write({"op": "identity"})
            reply: dict[str, Any] = await asyncio.wait_for(comm.read(), timeout)
            return reply
        finally:
            await comm.close()

    try:
        with _quiet("distributed.comm", "distributed.core"):
            reply = asyncio.run(asyncio.wait_for(identity(), timeout + 1))
    except (OSError, TimeoutError) as exc:
        raise InputError(
            f"no Dask scheduler answered at {address} within {timeout:g} s "
            f"({_reason(address, exc)}): is `dask scheduler` running there, are the host and port "
            "right, and can this machine reach them (firewall, tls:// and its certificates)?"
        ) from None
    except Exception as exc:  # something answered, but not a scheduler
        raise InputError(
            f"{address} answered but not as a Dask scheduler ({exc.__class__.__name__}); "
            "is the port the scheduler's (8786 by default), not its dashboard's?"
        ) from None
    if not isinstance(reply, dict) or reply.get("type") != "Scheduler":
        raise InputError(
            f"{address} answered but not as a Dask scheduler; is the port the scheduler's "
            "(8786 by default), not a worker's or the dashboard's?"
        )


def _reason(address: str, exc: BaseException) -> str:
    """Why `address` did not answer, in a few words (Dask's error keeps only "timed out")."""
    import socket

    from distributed.comm import parse_address
    from distributed.comm.addressing import parse_host_port

    scheme, location = parse_address(address)
    if scheme not in ("tcp", "tls"):
        return "no answer"
    try:
        host, port = parse_host_port(location, 8786)
        with socket.create_connection((host, port), timeout=2):
            return "it accepts connections but does not speak Dask's protocol"
    except socket.gaierror:
        return f"the host name {host} is not known"
    except ConnectionRefusedError:
        return "connection refused: nothing listens on that port"
    except TimeoutError:
        return "no answer: a firewall, or the wrong host"
    except (OSError, ValueError) as error:
        return error.strerror if isinstance(error, OSError) and error.strerror else "no answer"


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence the named loggers (Dask logs each failed connection attempt)."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


#: Called with (kind, line, seconds waited): kind "waiting" (no worker can segment: the
#: line says what the run waits for; repeated while it waits), "ready" (it can again; no
#: line), "unfit" (a worker that cannot segment, named once) or "note" (how segmentation
#: is placed, when `auto` chose plain CPU workers).
ClusterCallback = Callable[[str, str, float], None]

_cluster_listeners: list[ClusterCallback] = []


@contextlib.contextmanager
def listening_to_cluster(callback: ClusterCallback) -> Iterator[None]:
    """Call `callback` with what the run waits for on its cluster (see `ClusterCallback`)."""
    _cluster_listeners.append(callback)
    try:
        yield
    finally:
        _cluster_listeners.remove(callback)


def _tell(kind: str, message: str, waited: float, *, new: bool = True) -> None:
    """To the listeners (the CLI's progress line); without any, new lines go to the log."""
    if not _cluster_listeners:
        if message and new:
            log.warning("%s", message)
        return
    for listener in _cluster_listeners:
        listener(kind, message, waited)


class ClusterWatch:
    """The run's view of its Dask cluster: which workers can segment, what it waits for."""

    def __init__(self, client: Any, placement: Placement, *, cpu_ok: bool) -> None:
        self.client = client
        self.placement = placement
        self.cpu_ok = cpu_ok
        self.address = str(client.scheduler.address)
        self.unfit: dict[str, str] = {}
        chosen = parse_resource(placement.resource)
        self._auto = chosen is None
        # until `auto` is decided: what a worker needs for this model
        self.resources: dict[str, float] = (
            chosen if chosen is not None else {} if cpu_ok else dict(GPU_RESOURCE)
        )
        self._waiting_since: float | None = None
        self._said = ""

    def workers(self) -> dict[str, dict[str, Any]]:
        """The connected workers, by address, as the scheduler describes them."""
        info: dict[str, Any] = self.client.scheduler_info(n_workers=-1)
        workers: dict[str, dict[str, Any]] = info.get("workers", {})
        return workers

    def capable(self) -> list[str]:
        """Connected workers that offer segmentation's resources and were not found unfit."""
        return [
            address
            for address, worker in self.workers().items()
            if address not in self.unfit and _offers(worker, self.resources)
        ]

    def decide_resources(self) -> dict[str, float]:
        """The resources segmentation needs on this cluster: as set, or for ``auto`` the
        ``GPU`` slot when a worker offers it or the model needs CUDA, else none. Waits (and
        says so) while no worker is connected."""
        if not self._auto:
            return self.resources
        while True:
            workers = self.workers()
            if any(_offers(w, GPU_RESOURCE) for w in workers.values()) or not self.cpu_ok:
                self.resources = dict(GPU_RESOURCE)
            elif workers:
                self.resources = {}
                _tell(
                    "note",
                    f"no worker connected to {self.address} offers the Dask resource GPU: "
                    "segmenting on plain CPU workers, as the model may run on CPU "
                    "(--segmentation-resource GPU=1 waits for GPU workers instead).",
                    0.0,
                )
            if workers:
                self._auto = False
                self.progressed()
                return self.resources
            self.check()
            time.sleep(self.placement.poll_s)

    def refuse(self, worker: str, reason: str) -> None:
        """Name a worker that cannot segment, once; its tiles go elsewhere."""
        if worker in self.unfit:
            return
        self.unfit[worker] = reason
        _tell("unfit", f"{reason}; its tiles go to the workers that can.", 0.0)
        self._said = ""

    def progressed(self) -> None:
        """A tile finished: whatever the run waited for is there."""
        if self._waiting_since is not None:
            self._waiting_since = None
            self._said = ""
            _tell("ready", "", 0.0)

    def check(self) -> None:
        """Say what the run waits for while no worker can segment; stop it after the wait."""
        workers = self.workers()
        capable = [
            a for a, w in workers.items() if a not in self.unfit and _offers(w, self.resources)
        ]
        if capable:
            self.progressed()
            return
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        message = self._lack(workers)
        _tell("waiting", message, waited, new=message != self._said)
        self._said = message
        if waited >= self.placement.wait_s:
            resume = f"; then `{self.placement.resume_hint}` carries the run on" * bool(
                self.placement.resume_hint
            )
            raise NoWorkers(
                f"no Dask worker at {self.address} could take segmentation within "
                f"{self.placement.wait_s:g} s (--wait-for-workers): {self._provide()}{resume}."
            )

    def _lack(self, workers: dict[str, dict[str, Any]]) -> str:
        """One line: what the cluster lacks, what the run waits for, how to provide it."""
        wait = f"waiting up to {self.placement.wait_s:g} s (--wait-for-workers)"
        if not workers:
            return (
                f"no Dask worker is connected to {self.address}: segmentation waits for one; "
                f"{self._provide()}; {wait}."
            )
        fit = [a for a in workers if a not in self.unfit]
        if not fit:
            return (
                f"none of the {len(workers)} worker(s) connected to {self.address} can segment "
                f"(named above): {self._provide()}; {wait}."
            )
        need = describe_resources(self.resources)
        return (
            f"segmentation needs a worker with the Dask resource {need}, and none of the "
            f"{len(fit)} worker(s) connected to {self.address} offers it: {self._provide()}, "
            f"or pass --segmentation-resource none to segment on any worker; {wait}."
        )

    def _provide(self) -> str:
        if self.resources:
            flag = f" --resources {describe_resources(self.resources)}"
            return f"start a worker with `dask worker {self.address}{flag}`"
        return f"start a worker with `dask worker {self.address}`"


def _offers(worker: dict[str, Any], resources: Mapping[str, float]) -> bool:
    offered = worker.get("resources") or {}
    return all(offered.get(name, 0) >= amount for name, amount in resources.items())


def dask_client() -> Any | None:
    """The Dask client of the running flow's task runner, or None (not on Dask)."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None) if context else None
    if runner is None or type(runner).__name__ != "DaskTaskRunner":
        return None
    return runner.client
