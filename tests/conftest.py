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
