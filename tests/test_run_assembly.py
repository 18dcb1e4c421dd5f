"""A run is assembled once (`run.assemble.claim_run`) whichever way it starts: the lock is
claimed before any server or cluster, exclusively, and mask sources come back from a manifest
by their entry point."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lisegagr_core.config import RegionConfig
from lisegagr_core.errors import InputError
from lisegagr_core.run import RegionPaths, RunLock, run_region
from lisegagr_core.run.assemble import RunRequest, assemble_run, claim_run
from lisegagr_core.source_specs import SamSpec, spec_from_record
from lisegagr_core.standins.ground_truth import GroundTruthSpec

from .flow_helpers import stub_manifest, write_scene

LISEGAGR = Path(sys.executable).parent / "lisegagr"
TINY = ["--model", "tiny", "--device", "cpu", "--points-per-side", "4", "--no-classifier"]


def test_of_threads_taking_one_lock_at_the_same_moment_exactly_one_holds_it(
    tmp_path: Path,
) -> None:
    paths = RegionPaths(str(tmp_path / "out"))
    start, won, refused = threading.Barrier(8), [], []

    def take() -> None:
        lock = RunLock(paths)
        start.wait()
        try:
            won.append(lock.acquire())
        except InputError as exc:
            refused.append(str(exc))

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(won) == 1 and len(refused) == 7
    assert all("is being written by another run" in line for line in refused)
    assert RunLock(paths).held_by(won[0])


def test_a_lock_is_released_only_by_its_claimer(tmp_path: Path) -> None:
    paths = RegionPaths(str(tmp_path / "out"))
    mine, other = RunLock(paths), RunLock(paths)
    mine.acquire()
    other.release()  # holds nothing: must not remove the lock of a live run
    assert paths.exists(paths.lock)
    mine.release()
    assert not paths.exists(paths.lock)


def test_a_claimed_run_keeps_its_lock_through_the_pipeline_and_frees_it_after(
    tmp_path: Path,
) -> None:
    from lisegagr_core.run import InProcessExecutor, run_pipeline

    imagery, truth = write_scene(tmp_path, size=256)
    out = tmp_path / "out"
    request = RunRequest(
        [str(imagery)], str(out), RegionConfig(), source=GroundTruthSpec(str(truth))
    )
    with claim_run(request) as run:
        assert run.claim is not None and RunLock(run.paths).held_by(run.claim)
        manifest = run_pipeline(run, InProcessExecutor())
        assert RunLock(run.paths).held_by(run.claim)  # the pipeline left the claimer's lock
    assert manifest.state == "complete"
    assert not (out / ".lock").exists()


def test_run_region_refuses_a_busy_output_before_reading_a_tile(tmp_path: Path) -> None:
    imagery, truth = write_scene(tmp_path, size=256)
    out = tmp_path / "out"
    out.mkdir()
    stub_manifest(out, ["/elsewhere/other.tif"])
    with pytest.raises(InputError, match="holds the map of other sources"):
        run_region([str(imagery)], str(out), RegionConfig(), GroundTruthSpec(str(truth)))
    assert not (out / "tiles").exists() and not (out / ".lock").exists()


def test_a_grown_region_is_the_same_map_and_other_sources_are_another(tmp_path: Path) -> None:
    from lisegagr_core.run.assemble import claim_output

    out = tmp_path / "out"
    out.mkdir()
    stub_manifest(out, [str(tmp_path / "west.tif")])
    paths = RegionPaths(str(out))
    claim_output(paths, [str(tmp_path / "west.tif"), str(tmp_path / "east.tif")], False)
    with pytest.raises(InputError, match="other sources"):
        claim_output(paths, [str(tmp_path / "east.tif")], False)


def test_the_model_settings_and_default_classifier_come_with_a_file_not_a_regionconfig(
    tmp_path: Path,
) -> None:
    """A configuration file (or none) gets what `lisegagr run` adds; a RegionConfig is whole."""
    imagery, _ = write_scene(tmp_path, size=256)
    from_file = assemble_run(RunRequest([str(imagery)], str(tmp_path / "a")))
    assert from_file.config.classifier is not None  # the manifest's default classifier
    shipped = SamSpec.choose(None, None, None)[1]
    assert from_file.config.engine.amg.generator == shipped["amg"]["generator"]
    given = assemble_run(RunRequest([str(imagery)], str(tmp_path / "b"), RegionConfig()))
    assert given.config == RegionConfig()
    off = assemble_run(RunRequest([str(imagery)], str(tmp_path / "c"), classify=False))
    assert off.config.classifier is None


@pytest.mark.usefixtures("prefect_api")
def test_the_region_flow_claims_its_output_before_its_cluster_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json
    import socket

    import flows.region

    imagery, _ = write_scene(tmp_path, size=256)
    out = tmp_path / "out"
    out.mkdir()
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "since": "now"}  # alive
    (out / ".lock").write_text(json.dumps(holder))
    clusters: list[object] = []
    monkeypatch.setattr(flows.region, "task_runner", lambda *args: clusters.append(args))
    with (
        flows.region.one_sentence_errors(),  # as the CLI says it: no traceback in the log
        pytest.raises(InputError, match="is being written by another run"),
    ):
        flows.region.region_flow([str(imagery)], str(out), model="tiny", device="cpu")
    assert clusters == [] and json.loads((out / ".lock").read_text()) == holder


def test_mask_sources_come_back_from_a_manifest_by_their_entry_point(tmp_path: Path) -> None:
    truth = GroundTruthSpec(str(tmp_path / "truth.tif"))
    assert spec_from_record(truth.record()) == truth
    sam = SamSpec.choose("tiny", None, "cpu")[0]
    assert spec_from_record(sam.record()) == sam
    with pytest.raises(InputError, match="kind 'elsewhere', which no installed package provides"):
        spec_from_record({"kind": "elsewhere"})


def test_two_runs_started_at_the_same_moment_on_one_output_one_maps_one_is_refused(
    tmp_path: Path, prefect_api: str
) -> None:
    """As users start them: two `lisegagr run` processes. The loser says one sentence and
    starts nothing (no Prefect server, no model line); the winner maps the region."""
    imagery, _ = write_scene(tmp_path, size=256)
    args = [str(LISEGAGR), "run", str(imagery), "--out", str(tmp_path / "out"), *TINY]
    env = {**os.environ, "COLUMNS": "400", "PREFECT_API_URL": prefect_api, "PYTHONUNBUFFERED": "1"}
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600)[0] for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], outputs
    loser = outputs[codes.index(2)]
    assert "Traceback" not in loser
    (sentence,) = [line for line in loser.splitlines() if line.strip()]
    assert sentence.startswith("error: ") and "is being written by another run" in sentence
    winner = outputs[codes.index(0)]
    assert "prefect:" in winner and "fields from 1 tiles" in winner
    assert not (tmp_path / "out" / ".lock").exists()
