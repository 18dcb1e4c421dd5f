"""Nothing on empty ground: textureless areas (black, grey, white, zero-filled margins) give no
field, in `segment` and in `run`, while fields around them are still found."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.windows import Window

from lisegagr_core.config import EmptyGroundSettings, EngineConfig, RegionConfig
from lisegagr_core.empty_ground import empty_ground
from lisegagr_core.engine import segment_image
from lisegagr_core.imagery import read_image
from lisegagr_core.masks import MaskSet
from lisegagr_core.metrics import score_partition
from lisegagr_core.run import run_region
from lisegagr_core.standins.ground_truth import GroundTruthMaskSource

from .flow_helpers import truth_spec, write_rgb_geotiff
from .naip import naip_names, naip_scene

UTM = Affine(10.0, 0.0, 500_000.0, 0.0, -10.0, 4_400_000.0)


class WholeImage:
    """A mask source that calls the whole image one field, as SAM does on a uniform raster."""

    name = "whole-image"

    def generate(self, image: np.ndarray, region: Window) -> MaskSet:
        return MaskSet.from_masks(np.ones((1, *image.shape[:2]), dtype=bool))

    def generate_many(
        self, images: Sequence[np.ndarray], regions: Sequence[Window]
    ) -> list[MaskSet]:
        return [self.generate(image, region) for image, region in zip(images, regions, strict=True)]


@pytest.mark.parametrize("level", [0, 128, 255])
def test_a_uniform_image_gives_no_field(level: int) -> None:
    image = np.full((300, 300, 3), level, dtype=np.uint8)
    config = EngineConfig(working_size=None)
    assert segment_image(image, WholeImage(), config).instances == []
    # the step is what removes it: without it the whole image is one "field"
    off = config.model_copy(update={"empty_ground": EmptyGroundSettings(enabled=False)})
    if level != 255:  # white is "already segmented" to the method anyway
        assert len(segment_image(image, WholeImage(), off).instances) == 1


def test_near_uniform_noise_is_empty_but_texture_is_not() -> None:
    rng = np.random.default_rng(0)
    water = (60 + rng.normal(0, 0.1, (200, 200, 3))).round().clip(0, 255).astype(np.uint8)
    field = (120 + rng.normal(0, 3.0, (200, 200, 3))).round().clip(0, 255).astype(np.uint8)
    settings = EmptyGroundSettings()
    assert empty_ground(water, settings).mean() > 0.95
    assert empty_ground(field, settings).mean() == 0.0
    small = np.concatenate([field[:, :190], np.full((200, 10, 3), 90, np.uint8)], axis=1)
    assert not empty_ground(small, settings).any()  # a 10 × 200 strip is below min_area


@pytest.mark.parametrize("level", [0, 128])
def test_a_uniform_geotiff_without_nodata_gives_no_field_in_a_run(
    tmp_path: Path, level: int
) -> None:
    uniform = np.full((300, 300, 3), level, dtype=np.uint8)
    path = write_rgb_geotiff(tmp_path / "uniform.tif", uniform, UTM)
    truth = np.ones((300, 300), dtype=np.int64)  # a source that would call it all one field
    manifest = run_region(
        [str(path)], str(tmp_path / "out"), RegionConfig(), truth_spec(path, truth)
    )
    assert sum(status.instances or 0 for status in manifest.tiles.values()) == 0


@pytest.mark.shared_data
def test_fields_around_a_zero_filled_patch_are_still_found(shared_data: Path) -> None:
    rgb, truth = naip_scene(shared_data, naip_names(shared_data)[2])
    patched = rgb.copy()
    patched[:400, :400] = 0  # a zero-filled corner without a nodata value
    config = EngineConfig(working_size=None)
    labels = segment_image(patched, GroundTruthMaskSource(truth), config).labels
    assert (labels[:400, :400] == 0).all()
    outside = truth.copy()
    outside[:400, :400] = 0
    clipped = np.where(outside > 0, labels, 0)
    score = score_partition(outside, clipped)
    whole = score_partition(truth, segment_image(rgb, GroundTruthMaskSource(truth), config).labels)
    assert score.pixel_iou > 0.97
    assert whole.pixel_iou > 0.97  # the unpatched image keeps its corner fields


@pytest.mark.shared_data
def test_smooth_super_resolved_farmland_is_not_called_empty(shared_data: Path) -> None:
    """The method's own sample images are 4× super-resolved: smooth, yet fields."""
    settings = EmptyGroundSettings()
    shares = [
        float(empty_ground(read_image(path).rgb, settings).mean())
        for path in sorted((shared_data / "seed-samples").glob("*.jpg"))
    ]
    assert max(shares) < 0.005, shares
