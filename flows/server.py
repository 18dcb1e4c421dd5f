"""One Prefect server for a run: the one in PREFECT_API_URL, or a local one started for it.

Prefect's ephemeral mode starts a temporary server per process; with Dask process workers
that is several servers on one SQLite file ("database is locked"). A run therefore starts
one local server (127.0.0.1, a free port, its database under PREFECT_HOME) and hands its URL
to every worker through PREFECT_API_URL.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: prctl option: the signal a process gets when its parent dies (linux/prctl.h).
PR_SET_PDEATHSIG = 1


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent(parent: int) -> Callable[[], None] | None:
    """A `preexec_fn` that makes the child get SIGTERM when the thread that started it dies
    (Linux's PR_SET_PDEATHSIG), so a run killed with SIGKILL leaves no server behind."""
    if not sys.platform.startswith("linux"):
        return None

    def arm() -> None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _flush_logs() -> None:
    """Send the run's buffered logs before the server they go to stops."""
    from prefect.logging.handlers import APILogWorker

    with contextlib.suppress(Exception):
        APILogWorker.drain_all(timeout=5)


@contextlib.contextmanager
def _api_url_everywhere(url: str) -> Iterator[None]:
    """Point this process (Prefect's settings were read at import) and its children at `url`."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@contextlib.contextmanager
def prefect_server(
    api_url: str | None = None, home: Path | None = None, startup_timeout: float = 180.0
) -> Iterator[str]:
    """Yield the API URL of a reachable Prefect server, starting a local one if none is given.

    The URL is exported as PREFECT_API_URL for this process and the workers it starts. A
    local server stops with this context, and also when this process dies (even by SIGKILL),
    so enter it from a thread that lives as long as the run (the main thread).
    """
    if api_url:
        with _api_url_everywhere(api_url):
            yield api_url
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(home)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_UI_ENABLED"] = env.get("PREFECT_UI_ENABLED", "true")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # its own session, so a Ctrl-C in the terminal does not stop it before the run's logs
        # are sent; tied to this process's life, so a killed run does not orphan it
        start_new_session=True,
        preexec_fn=_die_with_parent(os.getpid()),
    )
    try:
        deadline = time.monotonic() + startup_timeout
        while not _healthy(url):
            if server.poll() is not None:
                error = (server.stderr.read() if server.stderr else b"").decode()[-500:]
                raise RuntimeError(f"the local Prefect server exited while starting: {error}")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the local Prefect server did not answer within {startup_timeout:.0f} s"
                )
            time.sleep(0.5)
        log.info("Prefect server at %s", url)
        with _api_url_everywhere(url):
            try:
                yield url
            finally:
                _flush_logs()
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
