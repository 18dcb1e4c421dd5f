"""One run at a time per output folder."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from lisegagr_core.errors import InputError
from lisegagr_core.run.store import RegionPaths

log = logging.getLogger(__name__)


class RunLock:
    """One run at a time per output: a lock file naming the holder (host, pid, start, claim).

    The file is created exclusively (`RegionPaths.create_text`), so of two runs started at the
    same moment exactly one holds it. A lock left by a run that died on this host (its pid is
    gone) is taken over; a live holder, or one on another host, refuses the second run with
    one sentence. The claim (a random token) is what `hold` recognises: a run assembled with
    `assemble.claim_run` holds its output from before any server starts to its last write.
    """

    def __init__(self, paths: RegionPaths) -> None:
        self.paths = paths
        self.url = paths.lock
        self.claim: str | None = None

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (host, pid, since, claim), or None when nobody does. A lock file
        still being written reads as a holder of unknown pid (a live one)."""
        if not self.paths.exists(self.url):
            return None
        try:
            return dict(json.loads(self.paths.read_text(self.url)))
        except (ValueError, FileNotFoundError):
            return {"host": "?", "pid": "?", "since": "now"}

    @staticmethod
    def is_gone(holder: Mapping[str, Any]) -> bool:
        """Whether the holder is a run on this host whose process no longer exists."""
        same_host = holder.get("host") == socket.gethostname()
        return same_host and not _pid_alive(_pid(holder))

    def acquire(self) -> str:
        """Take the lock (over a dead run's, with a warning); returns the claim. Raises
        `InputError` when a live run holds it, even one that took it a moment ago."""
        claim = uuid.uuid4().hex
        record = json.dumps(
            {
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "since": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "claim": claim,
            }
        )
        if not self.paths.create_text(self.url, record):
            holder = self.holder()
            if holder is None or not self.is_gone(holder):
                raise self._busy(holder or {})
            log.warning("taking over the lock of a run that is gone (pid %s)", holder.get("pid"))
            self.paths.remove(self.url)
            if not self.paths.create_text(self.url, record):
                raise self._busy(self.holder() or {})
        self.claim = claim
        return claim

    def held_by(self, claim: str | None) -> bool:
        """Whether the lock file holds `claim`."""
        holder = self.holder()
        return claim is not None and holder is not None and holder.get("claim") == claim

    def release(self) -> None:
        """Remove the lock if this object holds it (never another run's)."""
        if self.claim is not None and self.held_by(self.claim):
            self.paths.remove(self.url)
        self.claim = None

    @contextlib.contextmanager
    def hold(self, claim: str | None = None) -> Iterator[None]:
        """Within: the output is this run's. When the lock already holds `claim` (the run was
        claimed before its server started) it is kept as it is, and left to its claimer."""
        if self.held_by(claim):
            yield
            return
        with self:
            yield

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _busy(self, holder: Mapping[str, Any]) -> InputError:
        return InputError(
            f"{self.paths.root} is being written by another run (pid {holder.get('pid')} "
            f"on {holder.get('host')} since {holder.get('since')}); wait for it to "
            f"finish, or delete {self.url} if that run is gone."
        )


def _pid(holder: Mapping[str, Any]) -> int:
    try:
        return int(holder.get("pid", -1))
    except (TypeError, ValueError):
        return -1


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
