"""What the commands check before any work (for `run`: before a server or a cluster starts):
each refusal is one sentence, exit 2, in seconds, with nothing written."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import open_rasters

from .flow_helpers import stub_manifest

runner = CliRunner()

TINY = ["--model", "tiny", "--device", "cpu"]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

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


def _lock(out: Path, pid: int) -> None:
    import json
    import socket

    out.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "since": "2026-01-01T00:00:00"}
    (out / ".lock").write_text(json.dumps(holder))


def _dead_pid() -> int:
    import subprocess

    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_a_second_run_is_refused_before_any_server_or_cluster_starts(
    scene: Path, tmp_path: Path
) -> None:
    import os

    out = tmp_path / "out"
    _lock(out, os.getpid())  # a live holder: this very process
    result = runner.invoke(app, ["run", str(scene), "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert "is being written by another run" in _error_line(result.output)
    assert "prefect:" not in result.output


def test_status_reports_a_run_whose_process_is_gone_as_interrupted_and_resumable(
    tmp_path: Path,
) -> None:
    import os

    out = tmp_path / "out"
    _lock(out, _dead_pid())
    stub_manifest(out, ["scene.tif"], state="running", tiles={"r0c0": "pending"})
    result = runner.invoke(app, ["status", str(out)])
    assert result.exit_code == 0, result.output
    assert "interrupted, resumable" in result.output and "lisegagr resume" in result.output

    _lock(out, os.getpid())
    alive = runner.invoke(app, ["status", str(out)])
    assert f"running (pid {os.getpid()}" in alive.output


SERVER_HOLDER = """
import sys, time
from pathlib import Path
from flows.server import prefect_server
with prefect_server(home=Path(sys.argv[1])) as url:
    print(url, flush=True)
    time.sleep(600)
"""


@pytest.mark.slow
def test_a_killed_run_leaves_no_prefect_server_behind(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    import psutil

    script = tmp_path / "holder.py"
    script.write_text(SERVER_HOLDER)
    run = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "home")],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert run.stdout is not None
    url = run.stdout.readline().decode().strip()
    assert url.startswith("http://127.0.0.1:"), url
    (server,) = psutil.Process(run.pid).children()
    os.kill(run.pid, signal.SIGKILL)  # as the OOM killer or `kill -9` would
    run.wait()
    deadline = time.monotonic() + 60
    while _alive(server):
        assert time.monotonic() < deadline, f"the server (pid {server.pid}) outlived the run"
        time.sleep(0.5)


def _alive(process: Any) -> bool:
    import psutil

    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def test_relative_sources_are_recorded_as_absolute_paths(
    scene: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lisegagr_core.rasters import absolute_sources

    monkeypatch.chdir(scene.parent)
    rasters = open_rasters(["scene.tif"])
    assert rasters.to_dict()["rasters"] == [str(scene)]
    assert open_rasters(["."]).to_dict()["rasters"] == [str(scene)]
    assert absolute_sources(["scene.tif", "*.tif", "s3://imagery/a.tif"]) == [
        str(scene),
        str(scene.parent / "*.tif"),
        "s3://imagery/a.tif",
    ]


def test_segment_refuses_images_whose_outputs_would_collide_before_any_work(
    tmp_path: Path,
) -> None:
    import numpy as np
    import rasterio

    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        with rasterio.open(
            tmp_path / folder / "p0.png",
            "w",
            driver="PNG",
            width=64,
            height=64,
            count=3,
            dtype="uint8",
        ) as dst:
            dst.write(np.zeros((3, 64, 64), np.uint8))
    out = tmp_path / "out"
    images = [str(tmp_path / "a" / "p0.png"), str(tmp_path / "b" / "p0.png")]
    result = runner.invoke(app, ["segment", *images, "-o", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert f"{images[0]} and {images[1]} would both be written as" in _error_line(result.output)
    assert not out.exists()


def test_two_bands_are_refused_naming_the_option(scene: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["run", str(scene), "--out", str(tmp_path / "o"), "--bands", "4,3", *TINY]
    )
    assert result.exit_code == 2, result.output
    assert "--bands takes one band (grey) or three (as R,G,B), not '4,3'" in _error_line(
        result.output
    )


def test_a_segment_style_config_is_refused_saying_what_to_write(
    scene: Path, tmp_path: Path
) -> None:
    config = tmp_path / "segment.yaml"
    config.write_text("amg: {points_per_side: 16}\nrounds: {max_rounds: 3}\ncore: 512\n")
    result = runner.invoke(
        app, ["run", str(scene), "--out", str(tmp_path / "o"), "-c", str(config), *TINY]
    )
    assert result.exit_code == 2, result.output
    line = _error_line(result.output)
    assert f"{config}: amg, rounds are engine settings" in line
    assert "under `engine:` (engine: {amg: ..., rounds: ...})" in line


def test_an_output_holding_another_region_is_refused_unless_overwritten(
    scene: Path, tmp_path: Path
) -> None:

    from lisegagr_core.run import RegionPaths
    from lisegagr_core.run.assemble import claim_output

    out = tmp_path / "out"
    (out / "tiles").mkdir(parents=True)
    (out / "tiles" / "r0c0.0123.npz").write_bytes(b"old")
    stub_manifest(out, ["/elsewhere/other.tif"])
    exports = ["fields.gpkg", "fields.geojson", "fields.fgb", "labels.tif", "classes.tif"]
    for name in [*exports, "notes.txt"]:  # what `lisegagr export` left, and a file of the user's
        (out / name).write_bytes(b"old")
    result = runner.invoke(app, ["run", str(scene), "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert "holds the map of other sources (/elsewhere/other.tif); pass --overwrite" in (
        _error_line(result.output)
    )
    claim_output(RegionPaths(str(out)), [str(scene)], overwrite=True)
    assert not (out / "tiles").exists() and not (out / "manifest.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # no stale export stays
    # the same sources (a re-run, a resume) keep their cached tiles
    (out / "tiles").mkdir()
    stub_manifest(out, [str(scene)])
    claim_output(RegionPaths(str(out)), [str(scene)], overwrite=False)
    assert (out / "tiles").exists()


def test_version_and_top_level_help() -> None:
    from importlib.metadata import version

    assert runner.invoke(app, ["--version"]).output.strip() == f"lisegagr {version('lisegagr')}"
    top = runner.invoke(app, ["--help"]).output
    assert "lisegagr run SOURCES --out DIR" in top and "lisegagr segment IMAGE" in top


@pytest.mark.parametrize("command", [["run"], ["weights", "list"], ["segment"], ["export"]])
def test_help_shows_flags_without_a_bool_placeholder(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0 and "<bool>" not in result.output


def test_demo_options_have_help() -> None:
    text = " ".join(runner.invoke(app, ["demo", "--help"], terminal_width=200).output.split())
    assert "--out <path> Folder for the scene" in text
    assert "--seed <int> Seed of the generated scene" in text


def test_weights_list_shows_tiny_and_marks_the_model_used_by_default(tmp_path: Path) -> None:
    from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest

    (tmp_path / "manifest.json").write_text((DEFAULT_WEIGHTS_DIR / "manifest.json").read_text())
    default = Manifest.load(tmp_path / "manifest.json").default
    result = runner.invoke(
        app, ["weights", "list", "--weights-dir", str(tmp_path)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "tiny" in result.output
    assert f"{default} (default)" in result.output  # no vit_b here: the manifest's default
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"")
    result = runner.invoke(
        app, ["weights", "list", "--weights-dir", str(tmp_path)], terminal_width=200
    )
    assert "vit_b (default)" in result.output and f"{default} (default)" not in result.output


def test_the_nannies_closing_local_workers_stay_quiet_without_verbose() -> None:
    import logging

    logging.getLogger("distributed.nanny").setLevel(logging.NOTSET)
    runner.invoke(app, ["weights", "list"])
    assert logging.getLogger("distributed.nanny").getEffectiveLevel() == logging.ERROR


def test_a_local_cluster_dashboard_takes_a_free_loopback_port() -> None:
    """Not 8787 on every interface: no "port in use" warning when another cluster runs."""
    from flows.region import task_runner

    assert task_runner(workers=1).cluster_kwargs["dashboard_address"] == "127.0.0.1:0"


def test_segment_takes_a_folder_or_a_glob_of_images(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p0.png", "p1.jpg"):
        cv2.imwrite(str(images / name), rng.integers(0, 255, (96, 96, 3), dtype=np.uint8))
    (images / "notes.txt").write_text("not an image")
    fast = [*TINY, "--points-per-side", "4", "--working-size", "96"]
    for given, out in ((images, tmp_path / "a"), (images / "p*", tmp_path / "b")):
        result = runner.invoke(app, ["segment", str(given), "-o", str(out), *fast])
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in out.glob("*.labels.tif")) == [
            "p0.labels.tif",
            "p1.labels.tif",
        ]
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["segment", str(tmp_path / "empty"), "-o", str(tmp_path / "c")])
    assert empty.exit_code == 2
    assert f"{tmp_path / 'empty'}: the folder holds no image" in _error_line(empty.output)


def test_segment_reads_the_bands_asked_for(tmp_path: Path) -> None:
    import json

    import numpy as np
    import rasterio

    image = tmp_path / "four.tif"
    rng = np.random.default_rng(1)
    with rasterio.open(
        image, "w", driver="GTiff", width=96, height=96, count=4, dtype="uint8"
    ) as dst:
        dst.write(rng.integers(0, 255, (4, 96, 96), dtype=np.uint8))
    fast = [*TINY, "--points-per-side", "4", "--working-size", "96"]
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(image), "-o", str(out), "--bands", "4,3,2", *fast])
    assert result.exit_code == 0, result.output
    (entry,) = json.loads((out / "run.json").read_text())["images"]
    assert "bands 4, 3, 2 used" in entry["notes"]
    two = runner.invoke(app, ["segment", str(image), "-o", str(out), "--bands", "4,3", *fast])
    assert two.exit_code == 2
    assert "--bands takes one band (grey) or three" in _error_line(two.output)


@pytest.mark.parametrize(
    ("box", "expected"),
    [
        ("1,2,3", "--bbox takes minx,miny,maxx,maxy (min < max), not '1,2,3'"),
        ("5,5,1,1", "--bbox takes minx,miny,maxx,maxy (min < max)"),
        ("0,0,10,10", "lies outside the rasters"),
    ],
)
def test_run_bbox_is_checked_before_any_work(
    scene: Path, tmp_path: Path, box: str, expected: str
) -> None:
    result = runner.invoke(
        app, ["run", str(scene), "--out", str(tmp_path / "o"), "--bbox", box, *TINY]
    )
    assert result.exit_code == 2, result.output
    assert expected in _error_line(result.output)
    assert "prefect:" not in result.output and not (tmp_path / "o").exists()
