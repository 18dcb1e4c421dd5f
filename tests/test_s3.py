"""A real S3 API on 127.0.0.1 (moto's server in its own process): read from and write to buckets."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import rioxarray  # noqa: F401
import xarray as xr
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.errors import InputError
from lisegagr_core.rasters import open_rasters

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_api")]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _moto_server(env: dict[str, str] | None = None) -> Iterator[str]:
    """moto's S3 server in a subprocess on a free 127.0.0.1 port; yields its endpoint URL."""
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("moto's S3 server did not start")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    with _moto_server() as endpoint:
        yield endpoint


def point_aws_at(endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The usual AWS settings, pointing at `endpoint` (s3fs reads them); returns it."""
    for key, value in {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    return endpoint


@pytest.fixture
def aws_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The usual AWS settings, pointing at the local server."""
    return point_aws_at(s3_endpoint, monkeypatch)


def _bucket(name: str) -> object:
    import s3fs

    fs = s3fs.S3FileSystem()
    if not fs.exists(name):
        fs.mkdir(name)
    return fs


def test_run_reads_a_geotiff_from_a_bucket_and_writes_the_zarr_to_a_bucket(
    aws_env: str, tmp_path: Path
) -> None:
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

    scene_path = tmp_path / "scene.tif"
    write_georeferenced_scene(scene_path, make_farmland_scene(320, seed=5))
    fs = _bucket("imagery")
    fs.put(str(scene_path), "imagery/county/scene.tif")  # type: ignore[attr-defined]
    _bucket("results")
    config = tmp_path / "permissive.yaml"
    config.write_text("engine: {amg: {pred_iou_thresh: 0.0, stability_score_thresh: 0.0}}\n")

    result = CliRunner().invoke(
        app,
        [
            "run",
            "s3://imagery/county/",
            "--out",
            "s3://results/run1",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--points-per-side",
            "4",
            "--core",
            "256",
            "--halo",
            "32",
            "-c",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    mosaic = xr.open_zarr("s3://results/run1/mosaic.zarr", decode_coords="all", consolidated=False)
    assert mosaic.rio.crs.to_epsg() == 32615
    # the grid is anchored on multiples of the 256-px core in map space and covers the scene
    left, bottom, right, top = mosaic.rio.bounds()
    assert left <= 500_000 and top >= 4_500_000 and right >= 500_320 and bottom <= 4_499_680
    assert int(mosaic["labels"].max()) > 0
    import geopandas as gpd
    import s3fs

    with s3fs.S3FileSystem().open("results/run1/fields.parquet") as stream:
        fields = gpd.read_parquet(stream)
    assert len(fields) == int(mosaic["labels"].max())
    assert s3fs.S3FileSystem().exists("results/run1/manifest.json")


def test_missing_object_and_missing_bucket_get_one_sentence(aws_env: str) -> None:
    _bucket("imagery")
    with pytest.raises(InputError, match="no such object"):
        open_rasters(["s3://imagery/nothing-here.tif"])
    with pytest.raises(InputError, match="no such object"):
        open_rasters(["s3://no-such-bucket/scene.tif"])


def test_access_denied_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that checks credentials (moto with authentication on) refuses ours: 403."""
    import s3fs

    with _moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unknown-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unknown-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        s3fs.S3FileSystem.clear_instance_cache()
        with pytest.raises(InputError, match=r"imagery/scene\.tif: access denied"):
            open_rasters(["s3://imagery/scene.tif"])


@pytest.mark.usefixtures("aws_env")
def test_a_run_lock_in_a_bucket_is_a_conditional_put_that_one_run_wins() -> None:
    """On S3 the lock is created with If-None-Match (s3fs's mode "xb"): a second run is
    refused even when the first has only just written it."""
    from lisegagr_core.errors import InputError
    from lisegagr_core.run import RegionPaths, RunLock

    _bucket("locks")
    first = RunLock(RegionPaths("s3://locks/county"))
    first.acquire()
    with pytest.raises(InputError, match="s3://locks/county is being written by another run"):
        RunLock(RegionPaths("s3://locks/county")).acquire()
    first.release()
    RunLock(RegionPaths("s3://locks/county")).acquire()  # free again
