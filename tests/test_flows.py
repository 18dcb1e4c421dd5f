"""The region flow for real: a Prefect server, Dask processes on 127.0.0.1, faults, resume."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from flows.region import map_region, task_runner
from lisegagr_core.config import RegionConfig
from lisegagr_core.run import RunManifest, plan_run
from lisegagr_core.source_specs import MaskSourceSpec
from lisegagr_core.standins.ground_truth import GroundTruthSpec

from .flow_helpers import corrupt_block, write_scene
from .test_s3 import _bucket, aws_env, s3_endpoint  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]

TILES_256 = RegionConfig(core=256, halo=0)  # one tile = one block of the test files


def _map(
    runner: object,
    sources: list[str],
    out: str,
    config: RegionConfig,
    spec: MaskSourceSpec,
    **options: object,
) -> RunManifest:
    """Plan a run and map it with the flow on `runner`."""
    run = plan_run(sources, out, config, spec, **options)  # type: ignore[arg-type]
    manifest: RunManifest = map_region.with_options(task_runner=runner)(run)
    return manifest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for_workers(address: str, count: int, timeout: float = 120) -> None:
    from distributed import Client

    with Client(address, timeout=timeout) as client:
        client.wait_for_workers(count, timeout=timeout)


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`dask scheduler` and two `dask worker` processes: one declares GPU=1, one does not."""
    dask_bin = Path(sys.executable).parent / "dask"
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    common = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": dict(os.environ)}
    scheduler = subprocess.Popen(
        [
            str(dask_bin),
            "scheduler",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--dashboard-address",
            ":0",
        ],
        **common,
    )
    gpu = subprocess.Popen(
        [
            str(dask_bin),
            "worker",
            address,
            "--host",
            "127.0.0.1",
            "--name",
            "gpu-worker",
            "--nthreads",
            "1",
            "--resources",
            "GPU=1",
            "--no-dashboard",
        ],
        **common,
    )
    cpu = subprocess.Popen(
        [
            str(dask_bin),
            "worker",
            address,
            "--host",
            "127.0.0.1",
            "--name",
            "cpu-worker",
            "--nthreads",
            "2",
            "--no-dashboard",
        ],
        **common,
    )
    try:
        _wait_for_workers(address, 2)
        yield address, gpu
    finally:
        for process in (cpu, gpu, scheduler):
            process.terminate()
        for process in (cpu, gpu, scheduler):
            process.wait(timeout=30)


def _gpu_worker_address(address: str) -> str:
    from distributed import Client

    with Client(address) as client:
        workers = client.scheduler_info()["workers"]
    return next(a for a, w in workers.items() if w.get("resources", {}).get("GPU"))


def test_gpu_tasks_run_only_on_the_gpu_worker_of_an_existing_cluster(
    cluster: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    address, _ = cluster
    imagery, truth = write_scene(tmp_path, size=768)
    summary = _map(
        task_runner(scheduler=address),
        [str(imagery)],
        str(tmp_path / "out"),
        TILES_256,
        GroundTruthSpec(str(truth)),
    )
    assert summary.state == "complete" and summary.counts["computed"] == 9
    gpu_worker = _gpu_worker_address(address)
    workers = {status.worker for status in summary.tiles.values()}
    assert workers == {gpu_worker}


def test_a_corrupt_tile_fails_alone_and_resume_computes_just_that_tile(tmp_path: Path) -> None:
    imagery, truth = write_scene(tmp_path, size=768)
    original = corrupt_block(imagery, row=1, col=2)
    run = functools.partial(_map, task_runner(workers=1))
    spec = GroundTruthSpec(str(truth))

    first = run([str(imagery)], str(tmp_path / "out"), TILES_256, spec)
    failed = [k for k, s in first.tiles.items() if s.status == "failed"]
    errors = [first.tiles[k].error for k in failed]
    assert len(failed) == 1 and first.counts["computed"] == 8, errors
    assert "could not be read" in (first.tiles[failed[0]].error or "")
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["state"] == "failed tiles"

    from typer.testing import CliRunner

    from lisegagr.cli import app

    status = CliRunner().invoke(app, ["status", str(tmp_path / "out")])
    assert "failed" in status.output and "could not be read" in status.output

    imagery.write_bytes(original)  # the source is fixed
    resumed = CliRunner().invoke(app, ["resume", str(tmp_path / "out"), "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    second = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert second["counts"] == {"computed": 1, "cached": 8, "empty": 0, "failed": 0}
    assert second["tiles"][failed[0]]["status"] == "computed"


RUNNER = """
import sys
from flows.region import map_region, task_runner
from lisegagr_core.config import RegionConfig
from lisegagr_core.run import plan_run
from lisegagr_core.standins.ground_truth import GroundTruthSpec
if __name__ == "__main__":
    imagery, truth, out = sys.argv[1:4]
    run = plan_run([imagery], out, RegionConfig(core=256, halo=0), GroundTruthSpec(truth))
    map_region.with_options(task_runner=task_runner(workers=1))(run)
"""


def test_a_killed_run_resumes_computing_only_unfinished_tiles(tmp_path: Path) -> None:
    imagery, truth = write_scene(tmp_path, size=1536, seed=4)  # 36 tiles
    out = tmp_path / "out"
    script = tmp_path / "run.py"
    script.write_text(RUNNER)
    flow = subprocess.Popen(
        [sys.executable, str(script), str(imagery), str(truth), str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while len(list((out / "tiles").glob("*.npz"))) < 3:
        assert flow.poll() is None, "the run ended before it could be interrupted"
        assert time.monotonic() < deadline
        time.sleep(0.1)
    os.killpg(flow.pid, signal.SIGKILL)  # the flow process and its local cluster
    flow.wait()
    finished = len(list((out / "tiles").glob("*.npz")))
    assert 3 <= finished < 36
    assert (out / ".lock").exists()  # left behind by the killed run; taken over below

    resumed = _map(
        task_runner(workers=1), [str(imagery)], str(out), TILES_256, GroundTruthSpec(str(truth))
    )
    assert resumed.counts["cached"] == finished
    assert resumed.counts["computed"] == 36 - finished
    assert not (out / ".lock").exists()


def test_a_second_run_on_the_same_output_is_refused(tmp_path: Path) -> None:
    from lisegagr_core.errors import InputError
    from lisegagr_core.run import RegionPaths, RunLock

    imagery, truth = write_scene(tmp_path, size=256)
    with (
        RunLock(RegionPaths(str(tmp_path / "out"))),
        pytest.raises(InputError, match="another run"),
    ):
        _map(
            task_runner(workers=1),
            [str(imagery)],
            str(tmp_path / "out"),
            TILES_256,
            GroundTruthSpec(str(truth)),
        )


def test_the_flow_classifies_every_field_and_the_outputs_agree(tmp_path: Path) -> None:
    import geopandas as gpd
    import numpy as np
    import rioxarray  # noqa: F401
    import torch
    import xarray as xr

    from lisegagr_core.classify import ClassifierConfig, build_classifier, save_classifier

    imagery, truth = write_scene(tmp_path, size=512, seed=3)
    torch.manual_seed(0)
    classifier = tmp_path / "classifier.pt"
    save_classifier(
        build_classifier(ClassifierConfig(backbone="resnet18", input_size=64)), classifier
    )
    config = TILES_256.model_copy(update={"classifier": str(classifier)})
    summary = _map(
        task_runner(workers=1),
        [str(imagery)],
        str(tmp_path / "out"),
        config,
        GroundTruthSpec(str(truth)),
    )
    assert summary.state == "complete"
    fields = gpd.read_parquet(tmp_path / "out" / "fields.parquet")
    mosaic = xr.open_zarr(
        tmp_path / "out" / "mosaic.zarr", decode_coords="all", mask_and_scale=False
    )
    labels, classes = mosaic["labels"].values, mosaic["classes"].values
    assert len(fields) == summary.fields > 0
    columns = ["id", "lisegagr:field_score", "lisegagr:class"]
    for field_id, score, field_class in fields[columns].to_numpy():
        assert field_class == (1 if score >= 0.5 else 2)
        assert (classes[labels == int(field_id)] == field_class).all()
    assert np.isin(classes, [0, 1, 2, 255]).all()  # every instance classified, or nodata


def test_new_imagery_in_the_folder_computes_only_the_tiles_it_touches(tmp_path: Path) -> None:
    """The nightly case: the grid is anchored in map space, so yesterday's tiles keep their
    keys and hashes when a neighbouring raster appears in the source folder."""
    import numpy as np
    import rasterio
    from affine import Affine

    from lisegagr_core.standins.farmland import make_farmland_scene

    from .flow_helpers import ORIGIN

    scene = make_farmland_scene(1024, seed=8)
    profile = dict(driver="GTiff", height=1024, count=3, dtype="uint8", crs="EPSG:32615")
    folder = tmp_path / "incoming"
    folder.mkdir()

    def write_half(name: str, columns: slice, transform: Affine) -> None:
        part = np.ascontiguousarray(scene.rgb[:, columns])
        with rasterio.open(
            folder / name, "w", width=part.shape[1], transform=transform, **profile
        ) as dst:
            dst.write(np.moveaxis(part, -1, 0))

    truth = tmp_path / "truth.tif"
    with rasterio.open(
        truth,
        "w",
        width=1024,
        height=1024,
        count=1,
        dtype="uint32",
        crs="EPSG:32615",
        transform=ORIGIN,
        driver="GTiff",
    ) as dst:
        dst.write(scene.instances[None])
    write_half("west.tif", slice(0, 512), ORIGIN)
    run = functools.partial(_map, task_runner(workers=1))
    spec, out = GroundTruthSpec(str(truth)), str(tmp_path / "map")
    first = run([str(folder)], out, TILES_256, spec)
    assert first.counts["computed"] == 8  # 4 rows × 2 columns of 256-px tiles

    write_half("east.tif", slice(512, 1024), ORIGIN @ Affine.translation(512, 0))
    second = run([str(folder)], out, TILES_256, spec)
    assert len(second.tiles) == 16
    # halo 0: the west tiles see exactly what they saw yesterday
    assert second.counts == {"computed": 8, "cached": 8, "empty": 0, "failed": 0}
    west = set(first.tiles)
    assert {k for k, s in second.tiles.items() if s.status == "cached"} == west


def test_transient_storage_errors_on_the_first_reads_are_retried(tmp_path: Path) -> None:
    import fsspec

    from .flaky_storage import FlakyFileSystem, opens

    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
    imagery, truth = write_scene(tmp_path, size=256)
    counter = tmp_path / "opens"
    from lisegagr_core.rasters import open_rasters

    # inspecting the raster (in the flow process) opens the file k times: no failure there;
    # the next two opens, the tile's first reads on the worker, fail
    open_rasters(
        [f"flaky://{imagery}"],
        storage_options={"counter": str(counter), "fail_from": 0, "fail_to": -1},
    )
    k = opens(counter)
    counter.write_text("0")
    rasters_options = {"counter": str(counter), "fail_from": k + 1, "fail_to": k + 2}
    summary = _map(
        task_runner(workers=1),
        [f"flaky://{imagery}"],
        str(tmp_path / "out"),
        TILES_256,
        GroundTruthSpec(str(truth)),
        storage_options=rasters_options,
    )
    assert summary.counts == {"computed": 1, "cached": 0, "empty": 0, "failed": 0}
    assert opens(counter) >= k + 3  # inspection, two failed reads, then reads that worked
    failed_reads = Path(f"{counter}.failed").read_text().split()
    assert failed_reads == [str(imagery)] * 2  # the tile's pixels, not a side file


def test_a_worker_killed_mid_run_loses_no_tile(
    cluster: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """SIGKILL the GPU worker's process mid-run: its nanny restarts it, Dask reruns what it
    held, and the run completes with every tile."""
    import threading

    from distributed import Client

    address, _ = cluster
    imagery, truth = write_scene(tmp_path, size=1536, seed=9)  # 36 tiles
    out = tmp_path / "out"
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["summary"] = _map(
                task_runner(scheduler=address),
                [str(imagery)],
                str(out),
                TILES_256,
                GroundTruthSpec(str(truth)),
            )
        except Exception as exc:  # reported below
            outcome["error"] = exc

    flow = threading.Thread(target=run)
    flow.start()
    deadline = time.monotonic() + 240
    while len(list((out / "tiles").glob("*.npz"))) < 4:
        assert flow.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.1)
    gpu_worker = _gpu_worker_address(address)
    with Client(address) as client:
        pid = client.run(os.getpid, workers=[gpu_worker])[gpu_worker]
    os.kill(pid, signal.SIGKILL)
    flow.join(timeout=300)
    assert not flow.is_alive()
    assert "error" not in outcome, outcome
    summary = outcome["summary"]
    assert isinstance(summary, RunManifest)
    assert summary.counts["failed"] == 0
    assert summary.counts["computed"] + summary.counts["cached"] == 36
    assert len(list((out / "tiles").glob("*.npz"))) == 36


@pytest.mark.usefixtures("aws_env")  # before the cluster starts: the workers inherit it
def test_tiny_sam_on_s3_imagery_through_an_existing_cluster(
    cluster: tuple[str, subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """Real processes on 127.0.0.1: moto's S3, a Prefect server, a scheduler, a GPU and a CPU
    worker; the tiny SAM reads from a bucket and writes the mosaic to a bucket."""
    import xarray as xr

    from lisegagr_core.config import load_region_config
    from lisegagr_core.source_specs import SamSpec

    address, _ = cluster
    imagery, _ = write_scene(tmp_path, size=512, seed=2)
    fs = _bucket("county")
    fs.put(str(imagery), "county/naip/scene.tif")  # type: ignore[attr-defined]
    source, settings = SamSpec.choose("tiny", None, "cpu")
    config = load_region_config(
        None,
        {
            "core": 256,
            "halo": 32,
            "engine.amg.points_per_side": 4,
            "engine.amg.pred_iou_thresh": 0.0,
            "engine.amg.stability_score_thresh": 0.0,
        },
        model_settings=settings,
    )
    summary = _map(
        task_runner(scheduler=address), ["s3://county/naip/"], "s3://county/map", config, source
    )
    assert summary.state == "complete" and summary.counts["computed"] == 4
    assert {s.worker for s in summary.tiles.values()} == {_gpu_worker_address(address)}
    mosaic = xr.open_zarr("s3://county/map/mosaic.zarr", consolidated=False)
    assert int(mosaic["labels"].max()) == summary.fields > 0


def test_cuda_out_of_memory_retries_the_tile_with_a_smaller_prompt_batch(tmp_path: Path) -> None:
    """The segmentation task halves AMG's prompt batch until the tile fits (simulated OOM)."""
    import torch

    from lisegagr_core.config import AmgSettings
    from lisegagr_core.grid import TileSpec
    from lisegagr_core.run.stages import segment_batch
    from lisegagr_core.sources import MaskSource

    imagery, truth = write_scene(tmp_path, size=256)
    truth_spec = GroundTruthSpec(str(truth))
    batches: list[int] = []

    class TightMemory:
        """A mask source spec whose device holds at most 16 prompts at once."""

        model_id = name = "tight-memory"
        shared_across_tiles = True
        device = input_size = input_gsd_m = None

        def build(self, tile: TileSpec, amg: AmgSettings, transform: object) -> MaskSource:
            batches.append(amg.points_per_batch)
            if amg.points_per_batch is None or amg.points_per_batch > 16:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return truth_spec.build(tile, amg, transform)  # type: ignore[arg-type]

    config = TILES_256.model_copy(
        update={
            "engine": TILES_256.engine.model_copy(update={"amg": AmgSettings(points_per_side=8)})
        }
    )
    run = plan_run([str(imagery)], str(tmp_path), config, TightMemory())  # type: ignore[arg-type]
    (status,) = segment_batch(run, list(run.grid))
    assert status.status == "computed"
    # Sized to the device first (the whole 8x8 grid at most), then halved until it fits.
    assert batches == [None, 32, 16]


def test_tiles_segmented_several_per_task_give_the_same_map(tmp_path: Path) -> None:
    """`tiles_per_task` batches tiles through SAM together; the map does not change."""
    import xarray as xr
    from prefect.task_runners import ThreadPoolTaskRunner

    from lisegagr_core.config import load_region_config
    from lisegagr_core.source_specs import SamSpec

    imagery, _ = write_scene(tmp_path, size=768, seed=5)
    source, settings = SamSpec.choose("tiny", None, "cpu")
    assert source.shared_across_tiles
    labels = {}
    for per_task in (1, 4):
        config = load_region_config(
            None,
            {
                "core": 256,
                "halo": 32,
                "tiles_per_task": per_task,
                "engine.amg.points_per_side": 4,
                "engine.amg.pred_iou_thresh": 0.0,
                "engine.amg.stability_score_thresh": 0.0,
            },
            model_settings=settings,
        )
        out = tmp_path / f"out-{per_task}"
        summary = _map(
            ThreadPoolTaskRunner(max_workers=1), [str(imagery)], str(out), config, source
        )
        assert summary.state == "complete" and summary.counts["computed"] == 9
        mosaic = xr.open_zarr(out / "mosaic.zarr", consolidated=False)
        labels[per_task] = mosaic["labels"].values
    assert labels[1].max() > 0
    np.testing.assert_array_equal(labels[1], labels[4])


def test_a_segmentation_task_sends_its_tiles_through_sam_together(tmp_path: Path) -> None:
    """Round 1 of all the task's tiles is one call of the source (one encoder batch)."""
    from lisegagr_core.config import AmgSettings, load_region_config
    from lisegagr_core.grid import TileSpec
    from lisegagr_core.run.stages import segment_batch
    from lisegagr_core.source_specs import SamSpec
    from lisegagr_core.sources import MaskSource

    imagery, _ = write_scene(tmp_path, size=512, seed=6)
    sam, settings = SamSpec.choose("tiny", None, "cpu")
    calls: list[int] = []

    class Recording:
        model_id, name = sam.model_id, sam.name
        shared_across_tiles = True
        device, input_size, input_gsd_m = sam.device, sam.input_size, sam.input_gsd_m

        def build(self, tile: TileSpec, amg: AmgSettings, transform: object) -> MaskSource:
            inner = sam.build(tile, amg, transform)  # type: ignore[arg-type]
            original = inner.generate_many

            def generate_many(images, regions):  # type: ignore[no-untyped-def]
                calls.append(len(images))
                return original(images, regions)

            inner.generate_many = generate_many  # type: ignore[method-assign]
            return inner

    config = load_region_config(
        None,
        {"core": 256, "halo": 0, "engine.amg.points_per_side": 4, "tiles_per_task": 4},
        model_settings=settings,
    )
    run = plan_run([str(imagery)], str(tmp_path), config, Recording())  # type: ignore[arg-type]
    statuses = segment_batch(run, list(run.grid))
    assert [s.status for s in statuses] == ["computed"] * 4
    assert calls[0] == 4


def test_the_manifest_records_sources_that_resolve_from_any_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    imagery, truth = write_scene(tmp_path, size=256)
    monkeypatch.chdir(tmp_path)
    _map(task_runner(workers=1), [imagery.name], "out", TILES_256, GroundTruthSpec(str(truth)))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["sources"] == [str(imagery)]
    assert manifest["input"]["rasters"] == [str(imagery)]


def test_both_executors_make_the_same_map_and_either_output_resumes(tmp_path: Path) -> None:
    """One pipeline: the in-process executor and the flow on Dask write the same mosaic,
    the same GeoParquet rows and the same manifest, so `resume` works on either."""
    import geopandas as gpd
    import xarray as xr
    from typer.testing import CliRunner

    from lisegagr.cli import app
    from lisegagr_core.run import read_manifest, run_region

    imagery, truth = write_scene(tmp_path, size=640, seed=1)
    config, spec = RegionConfig(core=256, halo=32), GroundTruthSpec(str(truth))
    local = run_region([str(imagery)], str(tmp_path / "local"), config, spec)
    flow = _map(task_runner(workers=1), [str(imagery)], str(tmp_path / "flow"), config, spec)
    assert local.fields == flow.fields > 0 and local.counts == flow.counts
    mosaics = [
        xr.open_zarr(tmp_path / name / "mosaic.zarr", mask_and_scale=False)
        for name in ("local", "flow")
    ]
    for array in ("labels", "classes"):
        np.testing.assert_array_equal(mosaics[0][array].values, mosaics[1][array].values)
    fields = [gpd.read_parquet(tmp_path / name / "fields.parquet") for name in ("local", "flow")]
    assert [set(f["collection"]) for f in fields] == [{"local"}, {"flow"}]  # named by folder
    same = [f.drop(columns=["geometry", "collection"]) for f in fields]
    assert same[0].equals(same[1])
    assert fields[0].geometry.geom_equals(fields[1].geometry).all()
    manifests = [read_manifest(str(tmp_path / name)) for name in ("local", "flow")]
    assert manifests[0].grid == manifests[1].grid and manifests[0].input == manifests[1].input
    assert {k: t.tile_hash for k, t in manifests[0].tiles.items()} == {
        k: t.tile_hash for k, t in manifests[1].tiles.items()
    }

    lost = next(iter((tmp_path / "local" / "tiles").glob("*.npz")))
    lost.unlink()  # as if that tile had never finished
    resumed = CliRunner().invoke(app, ["resume", str(tmp_path / "local"), "--workers", "1"])
    assert resumed.exit_code == 0, resumed.output
    after = read_manifest(str(tmp_path / "local"))
    assert after.counts["computed"] == 1 and after.counts["cached"] == len(after.tiles) - 1
    again = xr.open_zarr(tmp_path / "local" / "mosaic.zarr", mask_and_scale=False)
    np.testing.assert_array_equal(again["labels"].values, mosaics[1]["labels"].values)


def _worker_keeps(message: str) -> bool:
    """Whether a local worker's logger lets an ERROR record with `message` through."""
    import logging

    logger = logging.getLogger("distributed.worker")
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 1, message, (), None)
    return bool(logger.filter(record))


def test_local_workers_drop_only_the_heartbeat_failure_of_a_closing_scheduler() -> None:
    from distributed import Client, LocalCluster

    kwargs = {**task_runner(workers=1).cluster_kwargs, "n_workers": 1}
    with LocalCluster(**kwargs) as cluster, Client(cluster) as client:
        kept = client.run(_worker_keeps, "Failed to communicate with scheduler during heartbeat.")
        other = client.run(_worker_keeps, "Compute Failed")

    assert list(kept.values()) == [False]
    assert list(other.values()) == [True]
