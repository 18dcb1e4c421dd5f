"""One run at a time per output folder."""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

from lisegagr_core.errors import InputError
from lisegagr_core.run.store import RegionPaths

log = logging.getLogger(__name__)


class RunLock:
    """One run at a time per output: a lock file naming the holder (host, pid, start).

    A lock left by a run that died on this host (its pid is gone) is taken over; a live
    holder, or one on another host, refuses the second run with one sentence.
    """

    def __init__(self, paths: RegionPaths) -> None:
        self.paths = paths
        self.url = paths.lock

    def holder(self) -> dict[str, Any] | None:
        """Who holds the lock (host, pid, since), or None when nobody does."""
        if not self.paths.exists(self.url):
            return None
        return dict(json.loads(self.paths.read_text(self.url)))

    @staticmethod
    def is_gone(holder: Mapping[str, Any]) -> bool:
        """Whether the holder is a run on this host whose process no longer exists."""
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
        self.paths.remove(self.url)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


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
