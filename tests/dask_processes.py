"""Real `dask scheduler` / `dask worker` processes on 127.0.0.1 for tests (stopped by `stop`)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

DASK = Path(sys.executable).parent / "dask"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """A `dask scheduler` on 127.0.0.1 and the `dask worker`s a test adds to it."""

    def __init__(self) -> None:
        port = free_port()
        self.address = f"tcp://127.0.0.1:{port}"
        self.processes: list[subprocess.Popen[bytes]] = []
        self._start(
            ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--dashboard-address", ":0"]
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the scheduler did not start"
                time.sleep(0.2)

    def _start(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.processes.append(
            subprocess.Popen(
                [str(DASK), *args],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        )

    def add_worker(self, name: str, *extra: str, env: dict[str, str] | None = None) -> None:
        """A worker process (with its nanny), one thread; `extra`: e.g. --resources GPU=1."""
        args = ["worker", self.address, "--host", "127.0.0.1", "--name", name]
        self._start([*args, "--nthreads", "1", "--no-dashboard", *extra], env)

    def wait_for_workers(self, count: int, timeout: float = 120) -> dict[str, str]:
        """Until `count` workers are connected; their addresses by name."""
        from distributed import Client

        with Client(self.address, timeout=30) as client:
            client.wait_for_workers(count, timeout=timeout)
            workers = client.scheduler_info(n_workers=-1)["workers"]
        return {str(w["name"]): address for address, w in workers.items()}

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in reversed(self.processes):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
