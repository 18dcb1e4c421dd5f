"""A run pointed at a real Dask cluster (`dask scheduler` / `dask worker` on 127.0.0.1): an
address with nothing behind it, a scheduler without workers, plain CPU workers, workers that
cannot do the work. Every process a test starts is stopped at its end."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flows.cluster import Placement, listening_to_cluster, parse_resource
from lisegagr.cli import app
from lisegagr_core.errors import InputError

from .dask_processes import Cluster, free_port
from .flow_helpers import write_scene

LISEGAGR = Path(sys.executable).parent / "lisegagr"
TINY = ["--model", "tiny", "--device", "cpu", "--points-per-side", "4", "--no-classifier"]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    running = Cluster()
    try:
        yield running
    finally:
        running.stop()


def test_an_unreachable_scheduler_is_refused_before_anything_starts(tmp_path: Path) -> None:
    imagery, _ = write_scene(tmp_path, size=256)
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = CliRunner().invoke(
        app,
        [
            "run",
            str(imagery),
            "--out",
            str(tmp_path / "out"),
            "--scheduler",
            address,
            "--connect-timeout",
            "3",
            *TINY,
        ],
    )
    seconds = time.monotonic() - started
    assert result.exit_code == 2, result.output
    shown = " ".join(result.output.split())
    assert f"no Dask scheduler answered at {address} within 3 s (connection refused" in shown
    assert "is `dask scheduler` running there" in shown
    assert "Traceback" not in result.output and "prefect:" not in result.output
    assert not (tmp_path / "out").exists()
    assert seconds < 3 + 10, seconds  # the timeout, and the tiny model is never loaded first


@pytest.mark.parametrize(
    ("address", "words"),
    [("foo://x", "is not a Dask address"), ("tcp://nosuchhost.invalid:8786", "is not known")],
)
def test_a_wrong_scheduler_address_says_what_is_wrong(address: str, words: str) -> None:
    from flows.cluster import check_scheduler

    with pytest.raises(InputError, match=words):
        check_scheduler(address, timeout=1)


def test_segmentation_resource_settings() -> None:
    assert parse_resource("auto") is None
    assert parse_resource("none") == {}
    assert parse_resource("GPU") == {"GPU": 1}
    assert parse_resource("GPU=1,MEM=0.5") == {"GPU": 1, "MEM": 0.5}
    with pytest.raises(InputError, match="takes auto, none, or NAME"):
        parse_resource("GPU=lots")


def test_a_worker_with_another_lisegagr_refuses_the_tiles(tmp_path: Path) -> None:
    import dataclasses

    from lisegagr_core.config import RegionConfig
    from lisegagr_core.run import plan_run
    from lisegagr_core.standins.ground_truth import GroundTruthSpec
    from tasks.worker_check import worker_problem

    imagery, truth = write_scene(tmp_path, size=256)
    run = plan_run([str(imagery)], str(tmp_path / "o"), RegionConfig(), GroundTruthSpec(str(truth)))
    assert worker_problem(run, "w1") is None
    older = dataclasses.replace(run, lisegagr_version="0.0.1")
    problem = worker_problem(older, "w1 (tcp://10.0.0.7:4000)")
    assert problem is not None
    assert problem.startswith("worker w1 (tcp://10.0.0.7:4000) cannot segment: it runs lisegagr")
    assert "and the run lisegagr 0.0.1" in problem
    gone = dataclasses.replace(run, source=GroundTruthSpec(str(tmp_path / "nowhere.tif")))
    assert "has no ground-truth raster" in (worker_problem(gone, "w1") or "")


def _run_cli(args: list[str]) -> subprocess.Popen[str]:
    """`lisegagr ARGS` as a user runs it (stderr line by line; PREFECT_API_URL inherited)."""
    return subprocess.Popen(
        [str(LISEGAGR), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
    )


def _run_args(imagery: Path, out: Path, cluster: Cluster, *extra: str) -> list[str]:
    """`lisegagr run` of `imagery` into `out` on `cluster` with the tiny model, in 4 tiles."""
    return [
        "run",
        str(imagery),
        "--out",
        str(out),
        "--scheduler",
        cluster.address,
        *TINY,
        "--core",
        "256",
        "--halo",
        "0",
        *extra,
    ]


def _read_lines(stream: object, into: list[tuple[float, str]]) -> threading.Thread:
    def read() -> None:
        try:
            for line in stream:  # type: ignore[attr-defined]
                into.append((time.monotonic(), line.rstrip()))
        except ValueError:  # the test closed the pipe when its process ended: nothing more
            return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def _wait_for_line(
    lines: list[tuple[float, str]], words: str, process: subprocess.Popen[str], timeout: float
) -> tuple[float, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for when, line in list(lines):
            if words in line:
                return when, line
        if process.poll() is not None:
            time.sleep(0.5)  # the reader's last lines
            break
        time.sleep(0.1)
    raise AssertionError(f"no line with {words!r}: " + "\n".join(line for _, line in lines))


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_run_says_it_waits_for_workers_and_uses_a_cpu_worker_that_joins(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A scheduler without workers: within seconds the run says what it waits for and how to
    provide it; a plain CPU worker (no --resources) that joins then maps the region."""
    imagery, _ = write_scene(tmp_path, size=512)
    out = tmp_path / "out"
    lines: list[tuple[float, str]] = []
    process = _run_cli(_run_args(imagery, out, cluster))
    try:
        _read_lines(process.stderr, lines)
        prefect_line, _ = _wait_for_line(lines, "prefect:", process, 120)
        told, line = _wait_for_line(lines, "waiting:", process, 60)
        assert told - prefect_line < 10, lines  # measured here: about 2 s
        assert f"no Dask worker is connected to {cluster.address}" in line
        assert f"start a worker with `dask worker {cluster.address}`" in line
        assert "--wait-for-workers" in line
        cluster.add_worker("cpu-1")
        stdout, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, "\n".join(line for _, line in lines)
    assert "4 computed" in stdout
    assert sum("waiting:" in line for _, line in lines) == 1, lines  # one line, not one a second
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["state"] == "complete"
    (worker,) = {tile["worker"] for tile in manifest["tiles"].values()}
    assert worker == cluster.wait_for_workers(1)["cpu-1"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_gpu_only_run_on_cpu_workers_stops_resumable_after_the_wait(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Plain CPU workers only and --segmentation-resource GPU=1: the run names the resource and
    how to offer it, stops after --wait-for-workers in one sentence, and `resume` (auto: any
    worker, since none offers GPU and the model runs on CPU) then maps it on the CPU workers."""
    imagery, _ = write_scene(tmp_path, size=512)
    out = tmp_path / "out"
    cluster.add_worker("cpu-1")
    cluster.add_worker("cpu-2")
    cluster.wait_for_workers(2)
    runner = CliRunner()
    started = time.monotonic()
    stopped = runner.invoke(
        app,
        _run_args(
            imagery, out, cluster, "--segmentation-resource", "GPU=1", "--wait-for-workers", "4"
        ),
    )
    seconds = time.monotonic() - started
    shown = " ".join(stopped.output.split())
    assert stopped.exit_code == 1, stopped.output
    assert "segmentation needs a worker with the Dask resource GPU=1, and none of the 2 " in shown
    assert f"`dask worker {cluster.address} --resources GPU=1`" in shown
    assert "--segmentation-resource none" in shown
    assert "could take segmentation within 4 s (--wait-for-workers)" in shown
    assert f"then `lisegagr resume {out}` carries the run on." in shown
    assert "Traceback" not in stopped.output
    assert seconds < 120, seconds
    status = runner.invoke(app, ["status", str(out)])
    assert "interrupted, resumable" in status.output, status.output

    resumed = runner.invoke(app, ["resume", str(out), "--scheduler", cluster.address])
    assert resumed.exit_code == 0, resumed.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["computed"] == 4
    names = cluster.wait_for_workers(2)
    assert {t["worker"] for t in manifest["tiles"].values()} <= {names["cpu-1"], names["cpu-2"]}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_workers_without_the_model_file_or_with_another_are_named_and_skipped(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The client's checkpoint path does not exist on the workers: one finds the file in its
    LISEGAGR_WEIGHTS_DIR, one has no file there, one has a file with other bytes. The two are
    named in one sentence each, and the first maps every tile."""
    import torch

    from flows.region import map_region, task_runner
    from lisegagr_core.config import load_region_config
    from lisegagr_core.models import build_tiny_sam
    from lisegagr_core.run import plan_run
    from lisegagr_core.source_specs import SamSpec

    client_dir, good, empty, other = (tmp_path / n for n in ("client", "good", "empty", "other"))
    for folder in (client_dir, good, empty, other):
        folder.mkdir()
    checkpoint = client_dir / "fields.pt"
    torch.save(build_tiny_sam(seed=0).state_dict(), checkpoint)
    shutil.copy(checkpoint, good / "fields.pt")
    torch.save(build_tiny_sam(seed=1).state_dict(), other / "fields.pt")
    cluster.add_worker("good", env={"LISEGAGR_WEIGHTS_DIR": str(good)})
    cluster.add_worker("empty", env={"LISEGAGR_WEIGHTS_DIR": str(empty)})
    cluster.add_worker("other", env={"LISEGAGR_WEIGHTS_DIR": str(other)})
    names = cluster.wait_for_workers(3)

    imagery, _ = write_scene(tmp_path, size=768)
    source, settings = SamSpec.choose(str(checkpoint), None, "cpu")
    config = load_region_config(
        None, {"core": 256, "halo": 0, "engine.amg.points_per_side": 4}, model_settings=settings
    )
    run = plan_run([str(imagery)], str(tmp_path / "out"), config, source)
    checkpoint.unlink()  # as on a cluster whose machines do not share the client's folders
    said: list[tuple[str, str]] = []
    with listening_to_cluster(lambda kind, line, _: said.append((kind, line))):
        manifest = map_region.with_options(task_runner=task_runner(scheduler=cluster.address))(
            run, Placement("none", wait_s=60)
        )
    assert manifest.counts["computed"] == 9 and manifest.counts["failed"] == 0
    assert {t.worker for t in manifest.tiles.values()} == {names["good"]}
    unfit = [line for kind, line in said if kind == "unfit"]
    assert len(unfit) == 2, unfit  # each named once
    for line in unfit:
        assert line.count(". ") == 0 and line.endswith("its tiles go to the workers that can.")
    (no_file,) = [line for line in unfit if f"worker empty ({names['empty']})" in line]
    looked = f"{tmp_path / 'client' / 'fields.pt'} nor {empty / 'fields.pt'}"
    assert f"cannot segment: it has no model file {looked} (copy" in no_file
    (another,) = [line for line in unfit if f"worker other ({names['other']})" in line]
    assert f"cannot segment: its model file {other / 'fields.pt'} has sha256" in another


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_the_stop_after_the_wait_is_one_sentence_in_a_terminal_too(
    cluster: Cluster, tmp_path: Path
) -> None:
    """As a user runs it (the command's own log handler, not Prefect's): no traceback."""
    imagery, _ = write_scene(tmp_path, size=256)
    out = tmp_path / "out"
    process = _run_cli(_run_args(imagery, out, cluster, "--wait-for-workers", "2"))
    try:
        _, stderr = process.communicate(timeout=240)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr and "Encountered exception" not in stderr, stderr
    shown = " ".join(stderr.split())
    assert f"error: no Dask worker at {cluster.address} could take segmentation within 2 s" in shown
    assert json.loads((out / "manifest.json").read_text())["state"] == "running"  # resumable
