"""The model knows its scale: imagery far from the ground sampling it was trained at is named."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from lisegagr_core.config import RegionConfig
from lisegagr_core.run import plan_run
from lisegagr_core.scale import ground_sampling_m, input_sampling_m, scale_note
from lisegagr_core.source_specs import SamSpec
from lisegagr_core.weights import DEFAULT_MANIFEST_PATH, Manifest

from .flow_helpers import write_rgb_geotiff


def test_ground_sampling_of_projected_and_geographic_rasters() -> None:
    utm = CRS.from_epsg(32633)
    assert ground_sampling_m(Affine(10, 0, 500_000, 0, -10, 4_400_000), utm) == 10.0
    feet = CRS.from_epsg(2230)  # NAD83 / California zone 6, US survey feet
    assert ground_sampling_m(Affine(3, 0, 0, 0, -3, 0), feet) == pytest.approx(0.914, abs=0.01)
    # 1e-5 degrees at 60° north: about 1.11 m north-south and 0.56 m east-west
    wgs84 = CRS.from_epsg(4326)
    gsd = ground_sampling_m(Affine(1e-5, 0, 10, 0, -1e-5, 60), wgs84)
    assert gsd == pytest.approx((0.557 + 1.113) / 2, rel=0.01)
    assert ground_sampling_m(Affine.identity(), None) is None


def test_input_sampling_follows_upscale_tile_and_input_size() -> None:
    assert input_sampling_m(1.0, 1, 1024, 384) == pytest.approx(2.667, abs=0.001)
    assert input_sampling_m(10.0, 4, 1024, 384) == pytest.approx(6.667, abs=0.001)


def test_a_note_only_beyond_twice_the_training_scale_with_the_upscale_to_pass() -> None:
    assert scale_note(1.0, 1, 1024, 384, 2.667, "m") is None  # NAIP, as trained
    assert scale_note(2.0, 1, 1024, 384, 2.667, "m") is None  # within 2×
    note = scale_note(10.0, 1, 1024, 384, 2.667, "lisegagr-fields-v3")
    assert note is not None and "--upscale 10" in note and "27 m" in note
    assert "lisegagr-fields-v3 was trained at 2.7 m" in note
    fine = scale_note(0.1, 1, 1024, 384, 2.667, "m")
    assert fine is not None and "coarser" in fine
    assert scale_note(10.0, 1, 1024, 384, None, "vit_h") is None  # scale not recorded
    assert scale_note(None, 1, 1024, 384, 2.667, "m") is None  # no CRS


def test_the_shipped_models_record_their_training_scale() -> None:
    manifest = Manifest.load(DEFAULT_MANIFEST_PATH)
    default = manifest.entries[manifest.default]
    assert default.input_gsd_m is not None and 2.0 < default.input_gsd_m < 3.0


def test_a_sentinel_2_run_plan_carries_the_note(tmp_path: Path) -> None:
    grey = np.full((64, 64, 3), 90, np.uint8)
    path = write_rgb_geotiff(tmp_path / "s2.tif", grey, Affine(10, 0, 500_000, 0, -10, 4_400_000))
    spec = SamSpec("fields", "weights", "0" * 64, "fields (test)", "cpu", 384, 2.667)
    run = plan_run([str(path)], str(tmp_path / "out"), RegionConfig(), spec)
    assert len(run.notes) == 1 and "--upscale" in run.notes[0]
    upscaled = plan_run([str(path)], str(tmp_path / "out2"), RegionConfig(upscale=8), spec)
    assert upscaled.notes == ()
