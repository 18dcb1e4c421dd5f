"""The `lisegagr` command as a user meets it: outputs on disk, one-sentence errors."""

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from typer.testing import CliRunner

from lisegagr.cli import app

runner = CliRunner()

TINY = ["--model", "tiny", "--device", "cpu", "--points-per-side", "4", "--working-size", "128"]


@pytest.fixture
def permissive_config(tmp_path: Path) -> Path:
    """Random weights rarely pass the paper's quality filters: lower them so masks come out."""
    path = tmp_path / "permissive.yaml"
    path.write_text("amg: {pred_iou_thresh: 0.0, stability_score_thresh: 0.0}\n")
    return path


def _write_png(path: Path, array: np.ndarray) -> Path:
    import cv2

    cv2.imwrite(str(path), array)
    return path


@pytest.fixture
def field_png(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    image = np.full((160, 200, 3), 60, np.uint8)
    image[:, 100:] = (40, 140, 90)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    return _write_png(tmp_path / "field.png", image)


def test_segment_writes_labels_table_overlay_and_labelme(
    tmp_path: Path, field_png: Path, permissive_config: Path
) -> None:
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["segment", str(field_png), "-o", str(out), *TINY, "-c", str(permissive_config)]
    )
    assert result.exit_code == 0, result.output
    with rasterio.open(out / "field.labels.tif") as labels:
        assert labels.read(1).shape == (160, 200)
        assert labels.dtypes[0] == "uint32"
        n_instances = int(labels.read(1).max())
    assert n_instances > 0
    table = (out / "field.instances.csv").read_text().splitlines()
    assert table[0].startswith("id,area,bbox_x0") and len(table) == n_instances + 1
    assert (out / "field.overlay.png").stat().st_size > 0
    labelme = json.loads((out / "field.json").read_text())
    assert labelme["imageWidth"] == 200 and labelme["imageHeight"] == 160
    assert len(labelme["shapes"]) >= n_instances  # one shape per piece of an instance
    run = json.loads((out / "run.json").read_text())
    assert run["model"].startswith("tiny") and run["config"]["amg"]["points_per_side"] == 4
    assert "made by tiny" in result.output


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.png", None, "no such file"),
        ("notes.png", b"these are not pixels", "is not an image file"),
        ("small.png", np.zeros((20, 30, 3), np.uint8), "at least 64 px"),
    ],
)
def test_bad_input_gets_one_sentence_and_the_other_images_still_run(
    tmp_path: Path, field_png: Path, name: str, content: object, expected: str
) -> None:
    bad = tmp_path / name
    if isinstance(content, bytes):
        bad.write_bytes(content)
    elif isinstance(content, np.ndarray):
        _write_png(bad, content)
    out = tmp_path / "out"
    result = runner.invoke(app, ["segment", str(bad), str(field_png), "-o", str(out), *TINY])
    assert result.exit_code == 1
    assert expected in result.output
    assert "Traceback" not in result.output
    assert (out / "field.labels.tif").exists()


def test_unknown_model_is_refused_before_any_work(tmp_path: Path, field_png: Path) -> None:
    result = runner.invoke(
        app, ["segment", str(field_png), "-o", str(tmp_path), "--model", "vit_b"]
    )
    assert result.exit_code == 2
    assert "lisegagr weights fetch vit_b" in result.output
    assert not list(tmp_path.glob("*.labels.tif"))


def test_weights_list_shows_the_manifest() -> None:
    result = runner.invoke(app, ["weights", "list"])
    assert result.exit_code == 0
    for name in ("vit_b", "vit_l", "vit_h"):
        assert name in result.output


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_demo_maps_its_own_scene_with_the_region_flow_and_scores_it(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        [
            "demo",
            "-o",
            str(tmp_path),
            "--model",
            "tiny",
            "--size",
            "320",
            "--points-per-side",
            "4",
            "--workers",
            "1",
        ],
    )
    assert result.exit_code == 0, result.output
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["true_fields"] > 3
    assert (tmp_path / "scene.tif").exists() and (tmp_path / "preview.png").exists()
    assert (tmp_path / "map" / "mosaic.zarr").exists() and (
        tmp_path / "map" / "fields.parquet"
    ).exists()


def test_serve_builds_the_nightly_deployment_with_its_schedule(tmp_path: Path) -> None:
    from lisegagr.cli_region import nightly_deployment

    deployment = nightly_deployment(
        "s3://imagery/county/", "s3://maps/county", "0 2 * * *", "vit_b", tmp_path, None, None
    )
    assert deployment.name == "lisegagr-nightly"
    assert deployment.entrypoint.endswith("flows/nightly.py:nightly_flow")
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "0 2 * * *"
    assert deployment.parameters["source"] == "s3://imagery/county/"
    assert deployment.parameters["model"] == "vit_b"
