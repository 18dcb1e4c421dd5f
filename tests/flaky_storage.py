"""A local filesystem behind the fsspec protocol ``flaky://`` whose reads fail transiently.

Opens number `fail_from` to `fail_to` (counted across processes in `counter`, so Dask
workers share the count) raise OSError, as a storage service under load does.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem


class FlakyFileSystem(LocalFileSystem):
    protocol = "flaky"

    def __init__(self, counter: str, fail_from: int = 2, fail_to: int = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.counter, self.fail_from, self.fail_to = counter, fail_from, fail_to

    def _next_open(self) -> int:
        with open(self.counter, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            handle.seek(0)
            count = int(handle.read() or 0) + 1
            handle.seek(0)
            handle.truncate()
            handle.write(str(count))
        return count

    def _open(self, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        if "r" in mode and self.fail_from <= self._next_open() <= self.fail_to:
            with open(f"{self.counter}.failed", "a") as failures:
                failures.write(f"{path}\n")
            raise OSError(f"injected transient read error for {path}")
        return super()._open(path, mode=mode, **kwargs)

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        return super()._strip_protocol(str(path).removeprefix("flaky://"))


def opens(counter: Path) -> int:
    return int(counter.read_text() or 0) if counter.exists() else 0
