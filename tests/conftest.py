"""Shared fixtures. The real imagery lives beside the project (../shared/data), never in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_root() -> Path:
    return Path(os.environ.get("LISEGAGR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $LISEGAGR_SHARED_DATA); tests that need it skip when it is absent."""
    root = shared_data_root()
    if not (root / "agoro-naip").is_dir():
        pytest.skip(f"real imagery not found at {root} (set LISEGAGR_SHARED_DATA)")
    return root


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One local Prefect server for the session (runs find it through PREFECT_API_URL)."""
    from flows.server import prefect_server

    with prefect_server(home=tmp_path_factory.mktemp("prefect-home")) as url:
        yield url


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Leave Prefect nothing to say after pytest has closed its captured streams.

    A test that runs a Prefect flow or task without `prefect_api` makes Prefect start a
    temporary server in this process, and Prefect stops it at interpreter exit, logging
    "Stopping temporary server" through its console handler, whose stream is pytest's
    capture, closed by then: a "--- Logging error ---" traceback after the summary. So stop
    any such server now (its logs and events sent first, then quietly), and point Prefect's
    console handlers at whatever `sys.stderr` is when they write (the terminal, after pytest),
    as in a real command.
    """
    import contextlib
    import logging
    import sys

    if "prefect" not in sys.modules:
        return
    server_module = sys.modules.get("prefect.server.api.server")
    if server_module is not None and server_module.SubprocessASGIServer._instances:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        logging.disable(logging.WARNING)  # "Still processing items", "Stopping ... server"
        try:
            for worker in (APILogWorker, EventsWorker):  # to the server, before it stops
                with contextlib.suppress(Exception):
                    worker.drain_all(timeout=5)
            for server in list(server_module.SubprocessASGIServer._instances.values()):
                server.stop()
        finally:
            logging.disable(logging.NOTSET)
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", []):
            if type(handler).__name__ == "PrefectConsoleHandler":
                handler.console._file = None  # rich: None follows sys.stderr when stderr=True
                handler.console.stderr = True


@pytest.fixture(autouse=True)
def _dask_scheduler_restored() -> Iterator[None]:
    """Each test starts with the Dask scheduler setting it found. A distributed `Client` sets
    ``scheduler: dask.distributed`` while it is open and restores the old value when it
    closes; two clients of one process (a test's own and a flow's task runner) closing out of
    order leave the setting behind with no client, and every later in-process compute fails
    with "Requested dask.distributed scheduler but no Client active"."""
    import dask

    before = dask.config.get("scheduler", None)
    yield
    if dask.config.get("scheduler", None) != before:
        dask.config.set(scheduler=before)
