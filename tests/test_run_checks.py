"""What `lisegagr run` checks before it starts a server or a cluster: each refusal is one
sentence, exit 2, in seconds, with nothing written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import open_rasters

runner = CliRunner()

TINY = ["--model", "tiny", "--device", "cpu"]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    from lisegagr_core.synthetic import make_farmland_scene, write_georeferenced_scene

    path = tmp_path / "scene.tif"
    write_georeferenced_scene(path, make_farmland_scene(400, seed=1))
    return path


def _error_line(output: str) -> str:
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


@pytest.fixture
def truncated(scene: Path) -> Path:
    cut = scene.with_name("cut.tif")
    cut.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    return cut


def test_a_truncated_geotiff_is_refused_when_opened_without_reading_pixels(
    truncated: Path,
) -> None:
    with pytest.raises(InputError, match=r"cut\.tif is truncated: its block at row 0, column 1"):
        open_rasters([str(truncated)])


def test_run_refuses_a_truncated_geotiff_in_one_sentence_before_any_work(
    truncated: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = runner.invoke(app, ["run", str(truncated), "--out", str(tmp_path / "out"), *TINY])
    assert result.exit_code == 2, result.output
    assert f"{truncated} is truncated" in _error_line(result.output)
    assert "prefect:" not in result.output
    assert not (tmp_path / "out").exists()
    assert time.monotonic() - started < 30
