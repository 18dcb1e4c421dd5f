import numpy as np

from lisegagr_core.config import EngineConfig, RefineSettings
from lisegagr_core.engine import segment_image
from lisegagr_core.masks import MaskSet
from lisegagr_core.refine import colour_entropy, edge_ratio, find_under_segmented
from lisegagr_core.standins.ground_truth import GroundTruthMaskSource

H, W = 160, 240


def _two_textured_fields(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two side-by-side fields of different colour with crop rows, on a bright background."""
    rng = np.random.default_rng(seed)
    image = np.full((H, W, 3), 245, np.uint8)
    truth = np.zeros((H, W), np.uint32)
    for field_id, (x0, x1, mean, period) in enumerate(
        [(10, 120, (70, 110, 40), 4), (120, 230, (150, 120, 70), 3)], start=1
    ):
        rows = ((np.arange(H)[:, None] // period) % 2) * 40
        texture = np.asarray(mean) + rows[..., None] + rng.normal(0, 18, (H, x1 - x0, 3))
        image[:, x0:x1] = np.clip(texture, 0, 255)
        truth[:, x0:x1] = field_id
    return image, truth


def test_colour_entropy_of_flat_and_noisy_regions() -> None:
    flat = np.full((50, 50, 3), 100, np.uint8)
    mask = np.ones((50, 50), bool)
    assert colour_entropy(flat, mask) == 0.0
    noisy = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    assert colour_entropy(noisy, np.ones((256, 256), bool)) > 7.9


def test_edge_ratio_ignores_the_masks_own_outline() -> None:
    flat = np.full((100, 100, 3), 80, np.uint8)
    mask = np.zeros((100, 100), bool)
    mask[20:80, 20:80] = True
    assert edge_ratio(flat, mask, RefineSettings()) == 0.0  # only outline edges
    image, truth = _two_textured_fields()
    assert edge_ratio(image, truth > 0, RefineSettings()) > 0.4


def test_flat_or_small_masks_are_not_under_segmented() -> None:
    image, truth = _two_textured_fields()
    flat = np.full_like(image, 90)
    masks = MaskSet.from_masks((truth > 0)[None])
    assert len(find_under_segmented(image, masks, RefineSettings())) == 1
    assert len(find_under_segmented(flat, masks, RefineSettings())) == 0
    assert len(find_under_segmented(image, masks, RefineSettings(min_area=H * W))) == 0


def test_refinement_splits_a_mask_that_merged_two_fields_of_different_colour() -> None:
    image, truth = _two_textured_fields()
    config = EngineConfig(working_size=None)

    merged_only = GroundTruthMaskSource(truth, merge_fractions=[1.0])
    without = segment_image(
        image, merged_only, config.model_copy(update={"refine": RefineSettings(enabled=False)})
    )
    assert len(without.instances) == 1

    source = GroundTruthMaskSource(truth, merge_fractions=[1.0])
    result = segment_image(image, source, config)
    assert result.refinement is not None and result.refinement.under_segmented == 1
    assert len(result.instances) == 2
    assert {i.stage for i in result.instances} == {"refinement"}
    for field_id in (1, 2):
        ids = np.unique(result.labels[truth == field_id])
        assert len(ids) == 1 and ids[0] > 0
        assert ((result.labels == ids[0]) == (truth == field_id)).all()
