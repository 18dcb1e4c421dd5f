"""Storage, credential and permission problems: one sentence naming the place, exit 2, no work."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.storage import StorageError, check_writable

from .test_s3 import point_aws_at

runner = CliRunner()

TINY = ["--model", "tiny", "--device", "cpu"]


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

    path = tmp_path / "scene.tif"
    write_georeferenced_scene(path, make_farmland_scene(128, seed=1))
    return path


@pytest.fixture
def no_aws_credentials(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credential anywhere boto looks (environment, files, instance metadata)."""
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


def _one_sentence(output: str) -> str:
    assert "Traceback" not in output
    (line,) = [line for line in output.splitlines() if line.startswith("error:")]
    return line


def test_run_into_a_folder_under_a_file_is_refused_before_any_work(
    scene: Path, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "map"
    result = runner.invoke(app, ["run", str(scene), "--out", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert f"{out}: a file is in the way" in _one_sentence(result.output)
    assert "prefect:" not in result.output  # no server was started


def test_segment_into_a_folder_under_a_file_fails_before_segmenting(
    scene: Path, tmp_path: Path
) -> None:
    (tmp_path / "taken").write_text("a file, not a folder")
    out = tmp_path / "taken" / "out"
    result = runner.invoke(app, ["segment", str(scene), "-o", str(out), *TINY])
    assert result.exit_code == 2, result.output
    assert f"{out}: a file is in the way" in _one_sentence(result.output)
    assert "model:" not in result.output  # refused before the model was even loaded


@pytest.mark.usefixtures("no_aws_credentials")
def test_run_to_a_bucket_without_credentials_is_one_sentence(scene: Path) -> None:
    started = time.monotonic()
    result = runner.invoke(app, ["run", str(scene), "--out", "s3://maps/x", *TINY])
    assert result.exit_code == 2, result.output
    assert "s3://maps/x: no storage credentials were found" in _one_sentence(result.output)
    assert time.monotonic() - started < 60


@pytest.mark.usefixtures("no_aws_credentials")
def test_status_of_a_bucket_without_credentials_is_one_sentence() -> None:
    result = runner.invoke(app, ["status", "s3://maps/x"])
    assert result.exit_code == 2, result.output
    assert "s3://maps/x/manifest.json: no storage credentials" in _one_sentence(result.output)


@pytest.mark.usefixtures("no_aws_credentials")
def test_reading_a_bucket_without_credentials_is_one_sentence(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "s3://imagery/scene.tif", "--out", str(tmp_path), *TINY])
    assert result.exit_code == 2, result.output
    assert "s3://imagery/scene.tif" in _one_sentence(result.output)
    assert "no storage credentials" in result.output


def test_a_dead_endpoint_is_one_sentence(
    scene: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port on 127.0.0.1 that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    point_aws_at(f"http://127.0.0.1:{port}", monkeypatch)
    result = runner.invoke(app, ["run", str(scene), "--out", "s3://maps/x", *TINY])
    assert result.exit_code == 2, result.output
    line = _one_sentence(result.output)
    assert f"s3://maps/x: http://127.0.0.1:{port} cannot be reached" in line


def test_a_missing_bucket_is_found_before_any_work(monkeypatch: pytest.MonkeyPatch) -> None:
    import s3fs

    from .test_s3 import _moto_server

    with _moto_server() as endpoint:
        point_aws_at(endpoint, monkeypatch)
        with pytest.raises(StorageError, match=r"s3://no-such-bucket/x: no such"):
            check_writable("s3://no-such-bucket/x")
        assert not s3fs.S3FileSystem().exists("no-such-bucket")  # not created by the check


def test_export_to_a_folder_under_a_file_is_one_sentence(tmp_path: Path) -> None:
    import geopandas as gpd
    from shapely.geometry import box

    run = tmp_path / "run"
    run.mkdir()
    gpd.GeoDataFrame({"id": [1]}, geometry=[box(0, 0, 1, 1)], crs="EPSG:32615").to_parquet(
        run / "fields.parquet"
    )
    (tmp_path / "taken").write_text("a file")
    target = tmp_path / "taken" / "fields.gpkg"
    result = runner.invoke(app, ["export", str(run), "--to", str(target)])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'taken'}: a file is in the way" in _one_sentence(result.output)


def test_export_of_an_unknown_format_or_of_no_run_is_one_sentence(tmp_path: Path) -> None:
    """Bad input to `export_run` (a notebook) and `lisegagr export` is one sentence naming the
    file and the problem, and a folder that is not a run's is never made."""
    from lisegagr_core.errors import InputError
    from lisegagr_core.run import export_run

    with pytest.raises(InputError) as unknown:
        export_run(str(tmp_path), "shp")
    assert str(unknown.value) == (
        f"{tmp_path} cannot be exported as 'shp'; the formats are gpkg, geojson, fgb, cog."
    )
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "shp"])
    assert result.exit_code == 2, result.output
    assert "--format must be one of gpkg, geojson, fgb, cog, not 'shp'." in _one_sentence(
        result.output
    )
    nowhere = tmp_path / "nowhere"
    for fmt, missing in (("gpkg", "fields.parquet"), ("cog", "manifest.json")):
        with pytest.raises(InputError, match=r"no such file; is .* the output of `lisegagr run`"):
            export_run(str(nowhere), fmt)
        result = runner.invoke(app, ["export", str(nowhere), "--format", fmt])
        assert result.exit_code == 2, result.output
        assert f"{nowhere / missing}: no such file" in _one_sentence(result.output)
    assert not nowhere.exists()
    (tmp_path / "fields.parquet").write_text("not parquet")
    result = runner.invoke(app, ["export", str(tmp_path), "--format", "geojson"])
    assert result.exit_code == 2, result.output
    assert f"{tmp_path / 'fields.parquet'} could not be read (" in _one_sentence(result.output)
    assert not (tmp_path / "fields.geojson").exists()


def test_an_output_without_write_permission_is_one_sentence(scene: Path) -> None:
    """As root no folder mode refuses a write; /sys (sysfs) does, for anyone."""
    out = "/sys/lisegagr-out"
    try:
        check_writable(out)
    except StorageError:
        pass
    else:
        pytest.skip("/sys is writable here")
    result = runner.invoke(app, ["run", str(scene), "--out", out, *TINY])
    assert result.exit_code == 2, result.output
    assert f"{out}: access denied" in _one_sentence(result.output)


def test_demo_into_a_folder_under_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file")
    out = tmp_path / "taken" / "demo"
    result = runner.invoke(app, ["demo", "-o", str(out), "--model", "tiny"])
    assert result.exit_code == 2, result.output
    assert f"{out}: a file is in the way" in _one_sentence(result.output)


def test_cog_export_to_a_bucket_writes_there_and_never_creates_a_bucket(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import numpy as np
    import s3fs

    from lisegagr_core.config import RegionConfig
    from lisegagr_core.run import run_region
    from lisegagr_core.run.export import export_run
    from lisegagr_core.standins.farmland import make_farmland_scene, write_georeferenced_scene

    from .flow_helpers import truth_spec
    from .test_s3 import _moto_server

    scene = make_farmland_scene(256, seed=3)
    write_georeferenced_scene(tmp_path / "scene.tif", scene)
    truth = scene.instances.astype(np.int64)
    scene_path = tmp_path / "scene.tif"
    run_region(
        [str(scene_path)],
        str(tmp_path / "out"),
        RegionConfig(core=256, halo=0),
        truth_spec(scene_path, truth),
    )
    with _moto_server() as endpoint:
        point_aws_at(endpoint, monkeypatch)
        fs = s3fs.S3FileSystem()
        with pytest.raises(StorageError, match=r"s3://no-such-bucket/gis: no such"):
            export_run(str(tmp_path / "out"), "cog", "s3://no-such-bucket/gis")
        assert not fs.exists("no-such-bucket")
        fs.mkdir("gis")
        written = export_run(str(tmp_path / "out"), "cog", "s3://gis/county")
        assert written == ["s3://gis/county/labels.tif", "s3://gis/county/classes.tif"]
        assert fs.size("gis/county/classes.tif") > 0
