"""README's "What happens when…" table, row by row: each case is run and must end with the
exit code and the words the table promises; a case without a row, or a row without a case,
fails."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from lisegagr.cli import app

from .dask_processes import Cluster
from .flow_helpers import stub_manifest

README = Path(__file__).resolve().parents[1] / "README.md"
TINY = ["--model", "tiny", "--device", "cpu"]
runner = CliRunner()


def readme_rows() -> dict[str, tuple[int, str]]:
    """When → (exit code, words shown), from the table under "## What happens when…"."""
    section = README.read_text().split("## What happens when…", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[2].isdigit():
            rows[cells[0]] = (int(cells[2]), cells[3].strip("`"))
    return rows


def _scene(folder: Path) -> Path:
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

    path = folder / "scene.tif"
    write_georeferenced_scene(path, make_farmland_scene(256, seed=1))
    return path


def _s3_env(monkeypatch: pytest.MonkeyPatch, tmp: Path, endpoint: str, keys: bool) -> None:
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    if keys:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _lock(out: Path, pid: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    holder = {"host": socket.gethostname(), "pid": pid, "since": "2026-01-01T00:00:00"}
    (out / ".lock").write_text(json.dumps(holder))


def output_under_a_file(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    (tmp / "taken").write_text("a file")
    return runner.invoke(app, ["run", str(_scene(tmp)), "--out", str(tmp / "taken/out"), *TINY])


def no_credentials(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    _s3_env(mp, tmp, "http://127.0.0.1:9", keys=False)
    return runner.invoke(app, ["run", str(_scene(tmp)), "--out", "s3://maps/x", *TINY])


def dead_endpoint(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    _s3_env(mp, tmp, f"http://127.0.0.1:{_unused_port()}", keys=True)
    return runner.invoke(app, ["run", str(_scene(tmp)), "--out", "s3://maps/x", *TINY])


def missing_source(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    return runner.invoke(app, ["run", str(tmp / "nothing.tif"), "--out", str(tmp / "o"), *TINY])


def truncated_source(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    scene = _scene(tmp)
    scene.write_bytes(scene.read_bytes()[: scene.stat().st_size // 2])
    return runner.invoke(app, ["run", str(scene), "--out", str(tmp / "o"), *TINY])


def no_run_to_export(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    return runner.invoke(app, ["export", str(tmp / "o"), "--format", "cog"])


def two_bands(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--bands", "4,3", *TINY]
    return runner.invoke(app, args)


def segment_layout(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    config = tmp / "segment.yaml"
    config.write_text("amg: {points_per_side: 16}\nrounds: {max_rounds: 3}\n")
    args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "-c", str(config), *TINY]
    return runner.invoke(app, args)


def another_run(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    _lock(tmp / "o", os.getpid())
    return runner.invoke(app, ["run", str(_scene(tmp)), "--out", str(tmp / "o"), *TINY])


def another_region(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    (tmp / "o").mkdir()
    stub_manifest(tmp / "o", ["/elsewhere/a.tif"])
    return runner.invoke(app, ["run", str(_scene(tmp)), "--out", str(tmp / "o"), *TINY])


def same_names(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    images = []
    for folder in ("a", "b"):
        (tmp / folder).mkdir()
        images.append(str(_scene(tmp / folder)))
    return runner.invoke(app, ["segment", *images, "-o", str(tmp / "o"), *TINY])


def killed_run(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lock(tmp / "o", gone.pid)
    stub_manifest(tmp / "o", [str(tmp / "a.tif")], state="running")
    return runner.invoke(app, ["status", str(tmp / "o")])


def box_outside(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--bbox", "0,0,10,10", *TINY]
    return runner.invoke(app, args)


def older_output(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    (tmp / "o").mkdir()
    (tmp / "o" / "manifest.json").write_text(json.dumps({"model": "vit_b", "tiles": {}}))
    return runner.invoke(app, ["resume", str(tmp / "o")])


def scheduler_gone(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--scheduler", "tcp://127.0.0.1:1"]
    result = runner.invoke(app, [*args, *TINY])
    assert not (tmp / "o").exists()
    return result


def stac_api_gone(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    api = f"http://127.0.0.1:{_unused_port()}/"
    args = ["run", "--stac-api", api, "--bbox", "-88,39,-87,40", "--out", str(tmp / "o")]
    result = runner.invoke(app, [*args, *TINY])
    assert not (tmp / "o").exists()
    return result


CLUSTER_RUN = ["--points-per-side", "4", "--no-classifier", "--core", "128", "--halo", "0"]


def no_capable_worker(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    cluster = Cluster()  # a scheduler, no worker
    try:
        args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--scheduler", cluster.address]
        return runner.invoke(app, [*args, *TINY, *CLUSTER_RUN, "--wait-for-workers", "2"])
    finally:
        cluster.stop()


def cpu_workers_only(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    cluster = Cluster()
    try:
        cluster.add_worker("cpu")  # no --resources
        cluster.wait_for_workers(1)
        args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--scheduler", cluster.address]
        return runner.invoke(app, [*args, *TINY, *CLUSTER_RUN])
    finally:
        cluster.stop()


def worker_without_model(tmp: Path, mp: pytest.MonkeyPatch) -> Result:
    """The client's checkpoint path is not on the workers (separate machines): one worker has
    a copy in its LISEGAGR_WEIGHTS_DIR, the other an empty one."""
    import dataclasses
    import shutil

    import torch

    from lisegagr_core.models import build_tiny_sam
    from lisegagr_core.source_specs import SamSpec

    for folder in ("client", "good", "empty"):
        (tmp / folder).mkdir()
    torch.save(build_tiny_sam(seed=0).state_dict(), tmp / "client" / "fields.pt")
    shutil.copy(tmp / "client" / "fields.pt", tmp / "good" / "fields.pt")
    real = SamSpec.choose

    def elsewhere(cls: type[SamSpec], *args: object) -> object:
        spec, settings = real(*args)  # type: ignore[arg-type]
        return dataclasses.replace(spec, name=str(tmp / "not-here" / "fields.pt")), settings

    mp.setattr(SamSpec, "choose", classmethod(elsewhere))
    cluster = Cluster()
    try:
        cluster.add_worker("good", env={"LISEGAGR_WEIGHTS_DIR": str(tmp / "good")})
        cluster.add_worker("empty", env={"LISEGAGR_WEIGHTS_DIR": str(tmp / "empty")})
        cluster.wait_for_workers(2)
        args = ["run", str(_scene(tmp)), "--out", str(tmp / "o"), "--scheduler", cluster.address]
        model = ["--model", str(tmp / "client" / "fields.pt"), "--device", "cpu"]
        return runner.invoke(app, [*args, *model, *CLUSTER_RUN])
    finally:
        cluster.stop()


def _prefect_logs_follow_stderr(mp: pytest.MonkeyPatch) -> None:
    """Prefect's console log handler keeps the stream it was made with; in tests, where each
    command's stderr is a new captured stream (closed after it), it writes to the current one,
    as it does in a real command, one per process."""
    import logging

    for handler in logging.getLogger().handlers:
        if type(handler).__name__ == "PrefectConsoleHandler":
            console = handler.console  # type: ignore[attr-defined]
            mp.setattr(console, "_file", None)
            mp.setattr(console, "stderr", True)


#: Cases that run on a Dask cluster: they need a Prefect server (the session's).
ON_A_CLUSTER = {no_capable_worker, cpu_workers_only, worker_without_model}


CASES: dict[str, Callable[[Path, pytest.MonkeyPatch], Result]] = {
    "the output folder lies under a file": output_under_a_file,
    "no S3 credentials are set": no_credentials,
    "the S3 endpoint does not answer": dead_endpoint,
    "a source raster is missing": missing_source,
    "a source GeoTIFF is truncated": truncated_source,
    "`--bands` names two bands": two_bands,
    "`--bbox` misses the imagery": box_outside,
    "the config has the `segment` layout": segment_layout,
    "another run is writing the output": another_run,
    "the output holds another region's map": another_region,
    "the folder given to `export` holds no run": no_run_to_export,
    "two images have the same name": same_names,
    "a run was killed (`kill -9`, OOM)": killed_run,
    "the output was written by an older lisegagr": older_output,
    "the STAC API does not answer": stac_api_gone,
    "the Dask scheduler does not answer": scheduler_gone,
    "no worker can take segmentation (none connected, or none with its resource) for "
    "`--wait-for-workers` seconds": no_capable_worker,
    "the cluster has only plain CPU workers (no `GPU` resource)": cpu_workers_only,
    "a worker lacks the model file (or has another one, or another lisegagr)": (
        worker_without_model
    ),
}


def test_every_case_has_a_row_and_every_row_a_case() -> None:
    assert set(readme_rows()) == set(CASES)


@pytest.mark.parametrize("when", list(CASES))
def test_the_readme_says_what_happens(
    when: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    exit_code, words = readme_rows()[when]
    if CASES[when] in ON_A_CLUSTER:
        request.getfixturevalue("prefect_api")
        _prefect_logs_follow_stderr(monkeypatch)
    result = CASES[when](tmp_path, monkeypatch)
    shown = " ".join(result.output.split())  # as one line, whatever the terminal width
    assert result.exit_code == exit_code, result.output
    assert words in shown, result.output
    assert "Traceback" not in result.output
    if exit_code == 2:
        assert re.search(r"^error: ", result.output, re.M), result.output
