"""The models the project ships: the default SAM and the default classifier in weights/.

These read the committed files themselves: a model that is missing, altered, too large, not
the default, or that stops finding real fields on a held-out image fails here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from lisegagr_core.classify.model import load_classifier
from lisegagr_core.config import RegionConfig, load_config
from lisegagr_core.engine import segment_image
from lisegagr_core.imagery import resize_labels, resize_to_working_size
from lisegagr_core.metrics import score_partition
from lisegagr_core.models import clear_model_cache, load_sam
from lisegagr_core.run.assemble import with_default_classifier
from lisegagr_core.source_specs import SamSpec
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.training import load_scenes, summary_path_of
from lisegagr_core.weights import (
    DEFAULT_MANIFEST_PATH,
    DEFAULT_WEIGHTS_DIR,
    Manifest,
    WeightsError,
    choose_model,
    default_classifier,
    sha256_file,
)

#: Object F1 and field-area pixel IoU of `segment_image` with the default model and the
#: settings recorded for it, on the first held-out NAIP image at a working size of 512 px,
#: measured when it was shipped (lisegagr-fields-v4: the field head's fields; the image at its
#: full size through both paths is tests/test_heldout_quality.py); the floors are 60 % of them.
MEASURED_F1, MEASURED_PIXEL_IOU = 0.500, 0.872
F1_FLOOR, PIXEL_IOU_FLOOR = 0.6 * MEASURED_F1, 0.6 * MEASURED_PIXEL_IOU

MANIFEST = Manifest.load(DEFAULT_MANIFEST_PATH)
MAX_BYTES = 25 * 10**6


def test_the_default_model_is_a_committed_project_model_that_matches_its_sha256() -> None:
    name = MANIFEST.default
    spec = MANIFEST.entries[name]
    assert spec.url is None, "the default must be a project-trained model committed in weights/"
    path = DEFAULT_WEIGHTS_DIR / spec.filename
    assert path.stat().st_size == spec.size <= MAX_BYTES
    assert sha256_file(path) == spec.sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    summary = json.loads(summary_path_of(path).read_text())
    assert summary["data"]["validation_names"], "the summary names the held-out images"
    assert spec.settings, "the model carries the settings it was tuned with"
    assert spec.input_gsd_m is not None, "the model records the ground sampling it learned at"
    assert spec.card is not None and (DEFAULT_WEIGHTS_DIR / spec.card).is_file()


def test_commands_and_flows_use_the_default_model_when_none_is_named() -> None:
    assert choose_model(None, DEFAULT_WEIGHTS_DIR, MANIFEST) == MANIFEST.default
    assert SamSpec.choose(None, None, "cpu")[0].name == MANIFEST.default  # the flows' choice
    loaded = load_sam(MANIFEST.default, device="cpu")
    assert loaded.origin == "project" and loaded.settings == MANIFEST.entries[loaded.name].settings


def test_an_altered_default_model_is_refused_with_the_command_that_fixes_it(
    tmp_path: Path,
) -> None:
    spec = MANIFEST.entries[MANIFEST.default]
    shutil.copy(DEFAULT_MANIFEST_PATH, tmp_path / "manifest.json")
    data = bytearray((DEFAULT_WEIGHTS_DIR / spec.filename).read_bytes())
    data[-100] ^= 0xFF
    (tmp_path / spec.filename).write_bytes(bytes(data))
    clear_model_cache()
    with pytest.raises(WeightsError, match=r"sha256 .* restore it from the project repository"):
        load_sam(MANIFEST.default, weights_dir=tmp_path, device="cpu")


def test_the_default_classifier_is_committed_small_and_used_by_runs() -> None:
    path = default_classifier(DEFAULT_WEIGHTS_DIR, MANIFEST)
    assert path is not None and path.stat().st_size <= MAX_BYTES
    _, header = load_classifier(path)
    assert header["metadata"]["history"], "the file records its training"
    config = with_default_classifier(RegionConfig(), str(DEFAULT_WEIGHTS_DIR))
    assert config.classifier == str(path)
    assert MANIFEST.classifier is not None and MANIFEST.classifier.card is not None
    assert (DEFAULT_WEIGHTS_DIR / MANIFEST.classifier.card).is_file()


@pytest.mark.slow
@pytest.mark.shared_data
def test_default_model_finds_fields_on_a_held_out_naip_image(shared_data: Path) -> None:
    sam = load_sam(MANIFEST.default, device="cpu")
    spec = MANIFEST.entries[MANIFEST.default]
    held_out = json.loads(summary_path_of(DEFAULT_WEIGHTS_DIR / spec.filename).read_text())
    [scene] = load_scenes(shared_data / "agoro-naip", held_out["data"]["validation_names"][:1])
    config = load_config(None, {"working_size": 512}, model_settings=sam.engine_settings)
    image, _ = resize_to_working_size(scene.rgb, config.working_size)
    truth = resize_labels(scene.instances, image.shape[:2])

    labels = segment_image(image, SamMaskSource(sam, config.amg), config).labels

    scores = score_partition(truth, labels)
    assert scores.f1 >= F1_FLOOR, scores
    assert scores.pixel_iou >= PIXEL_IOU_FLOOR, scores


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_demo_prints_the_scores_of_its_own_run(tmp_path: Path) -> None:
    """The demo's numbers are the run's: recomputed here from the mosaic it wrote and the
    scene's known fields, they match what it printed and saved."""
    import re

    import rasterio
    from rasterio.windows import Window
    from typer.testing import CliRunner

    from lisegagr.cli import app
    from lisegagr_core.mosaic import open_mosaic, read_window
    from lisegagr_core.standins.farmland import make_farmland_scene

    size = 640
    args = ["demo", "-o", str(tmp_path), "--size", str(size), "--workers", "1", "--seed", "3"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert MANIFEST.default in result.output  # the default model made it, and says so
    printed = re.search(r"object F1 ([\d.]+), field-area pixel IoU ([\d.]+)", result.output)
    assert printed is not None, result.output

    scene = make_farmland_scene(size, seed=3)
    with rasterio.open(tmp_path / "scene.tif") as src:
        origin = src.transform
    manifest = json.loads((tmp_path / "map" / "manifest.json").read_text())
    grid = manifest["input"]["transform"]
    col, row = round((origin.c - grid[2]) / grid[0]), round((origin.f - grid[5]) / grid[4])
    group = open_mosaic(str(tmp_path / "map" / "mosaic.zarr"), mode="r")
    labels = read_window(group, Window(col, row, size, size))
    scores = score_partition(scene.instances, labels)

    saved = json.loads((tmp_path / "scores.json").read_text())
    assert saved["f1"] == pytest.approx(scores.f1) and saved["pixel_iou"] == pytest.approx(
        scores.pixel_iou
    )
    assert (float(printed[1]), float(printed[2])) == (
        round(scores.f1, 2),
        round(scores.pixel_iou, 2),
    )
    assert manifest["config"]["classifier"], "the demo classifies with the default classifier"
