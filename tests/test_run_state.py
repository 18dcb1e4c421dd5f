"""A run's state (store, manifest, lock, status) is read without the method's stack, and
`run_status` is what `lisegagr status` prints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from lisegagr_core.run import RegionPaths, RunLock, run_status

from .flow_helpers import stub_manifest

REPO = Path(__file__).resolve().parents[1]

#: What a run's state must not load: the model, the cluster, the mosaic, the polygons.
HEAVY = ("torch", "torchvision", "segment_anything", "dask", "zarr", "xarray", "geopandas", "cv2")


def _loaded_after(code: str) -> list[str]:
    """The heavy modules a fresh interpreter holds after running `code`."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def test_reading_a_run_loads_no_torch_dask_zarr_or_geopandas() -> None:
    assert _loaded_after("import lisegagr_core.run.store") == []
    reading = (
        "import lisegagr_core.run.manifest, lisegagr_core.run.lock, lisegagr_core.run.status\n"
        "from lisegagr_core.run import RegionPaths, RunLock, RunManifest, read_manifest, "
        "run_status"
    )
    assert _loaded_after(reading) == []
    # the list of export formats too: `clear` reads it, a notebook's `export_run` starts light
    exports = "from lisegagr_core.run import RegionPaths, export_run\nRegionPaths('o').outputs()"
    assert _loaded_after(exports) == []


def test_status_from_the_command_line_loads_none_of_the_method(tmp_path: Path) -> None:
    stub_manifest(tmp_path / "out", ["scene.tif"], tiles={"r0c0": "computed"})
    command = (
        "from typer.testing import CliRunner\nfrom lisegagr.cli import app\n"
        f"result = CliRunner().invoke(app, ['status', {str(tmp_path / 'out')!r}])\n"
        "assert result.exit_code == 0 and '1 tiles' in result.output, result.output"
    )
    assert _loaded_after(command) == []


def test_the_whole_run_is_still_there_on_first_use() -> None:
    import lisegagr_core.run as run

    assert callable(run.run_region) and callable(run.plan_run)
    assert set(run.__all__) <= set(dir(run))


def test_run_status_counts_a_stored_pending_tile_as_computed_and_lists_failures(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    tiles = {"r0c0": "computed", "r0c1": "pending", "r0c2": "pending", "r1c0": "failed"}
    stub_manifest(out, ["scene.tif"], state="running", tiles=tiles)
    stored = out / "tiles"
    stored.mkdir()
    (stored / "r0c1.0123456789abcdef.npz").write_bytes(b"")  # finished after the manifest
    (stored / "r0c2.0123456789abcdef.part").write_bytes(b"")  # still being written

    summary = run_status(str(out))

    assert summary.by_status == {"computed": 2, "failed": 1, "pending": 1}
    assert summary.failed == {"r1c0": None}
    assert summary.tiles == 4 and summary.model == "tiny"
    assert summary.state == "interrupted" and summary.holder is None
    assert f"`lisegagr resume {out}`" in summary.state_text

    RunLock(RegionPaths(str(out))).acquire()  # a live holder: this process
    running = run_status(str(out))
    assert running.state == "running"
    assert running.holder is not None and running.holder["pid"] == os.getpid()
    assert running.state_text.startswith(f"running (pid {os.getpid()} on ")


def test_a_finished_run_is_its_manifest_state(tmp_path: Path) -> None:
    stub_manifest(tmp_path / "out", ["scene.tif"], state="failed tiles", tiles={"r0c0": "empty"})
    summary = run_status(str(tmp_path / "out"))
    assert (summary.state, summary.state_text) == ("failed tiles", "failed tiles")
    assert summary.by_status == {"empty": 1}
