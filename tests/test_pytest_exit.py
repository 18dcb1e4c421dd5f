"""`make test` ends with pytest's summary: nothing Prefect says at exit comes after it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONFTEST = Path(__file__).resolve().parent / "conftest.py"

#: A flow run without `prefect_api`: Prefect starts its temporary server in pytest's process.
FLOW_WITHOUT_A_SERVER = """
from prefect import flow


@flow
def tiny() -> int:
    return 1


def test_a_flow_without_a_server() -> None:
    assert tiny() == 1
"""


@pytest.mark.slow
def test_a_temporary_prefect_server_stops_before_pytest_closes_its_streams(
    tmp_path: Path,
) -> None:
    shutil.copy(CONFTEST, tmp_path / "conftest.py")
    (tmp_path / "test_probe.py").write_text(FLOW_WITHOUT_A_SERVER)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:warnings"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Logging error" not in output and "Error logging to API" not in output, output
    assert done.stderr.strip() == "", output
    assert done.stdout.strip().splitlines()[-1].startswith("1 passed"), output
