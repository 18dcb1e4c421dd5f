"""The fast mask generator against segment_anything's own, and the fused, bf16 encoder.

The SAM under test is the real architecture (`tiny`) with its mask heads answering from the
image's colour segments (`standins.oracle`): random weights alone let no mask through the
paper's filters, so without the oracle an equivalence test at real thresholds would compare
two empty lists.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from numpy.typing import NDArray
from rasterio.windows import Window
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam

from lisegagr_core.architectures import TINY, TINY_MODEL_NAME
from lisegagr_core.config import AmgSettings, EngineConfig
from lisegagr_core.encoder import FusedImageEncoder, ImageEncoder
from lisegagr_core.engine import segment_image, segment_images
from lisegagr_core.fast_amg import FastMaskGenerator
from lisegagr_core.masks import MaskSet
from lisegagr_core.models import LoadedSam, build_tiny_sam
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.standins.farmland import make_farmland_scene
from lisegagr_core.standins.oracle import install_segment_oracle


@pytest.fixture(scope="module")
def oracle_sam() -> Sam:
    sam = build_tiny_sam()
    install_segment_oracle(sam)
    return sam


def _farmland(seed: int) -> NDArray[np.uint8]:
    """A 256² view of a 768² synthetic farmland scene: about 20 fields."""
    return cv2.resize(
        make_farmland_scene(768, seed=seed).rgb, (256, 256), interpolation=cv2.INTER_AREA
    )


@pytest.fixture(scope="module")
def farmland() -> NDArray[np.uint8]:
    return _farmland(3)


def _vanilla(sam: Sam, image: NDArray[np.uint8], settings: AmgSettings) -> NDArray[np.bool_]:
    records = SamAutomaticMaskGenerator(sam, **settings.segment_anything_kwargs()).generate(image)
    if not records:
        return np.zeros((0, *image.shape[:2]), dtype=bool)
    return np.stack([r["segmentation"] for r in records])


def _matched_ious(expected: NDArray[np.bool_], actual: NDArray[np.bool_]) -> NDArray[np.float64]:
    """For every expected mask, its best IoU with any actual mask."""
    a = expected.reshape(len(expected), -1).astype(np.float64)
    b = actual.reshape(len(actual), -1).astype(np.float64)
    if len(b) == 0:
        return np.zeros(len(a))
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)  # two empty masks agree
    return iou.max(axis=1)


def _assert_equivalent(expected: NDArray[np.bool_], actual: NDArray[np.bool_]) -> None:
    """The issue's criterion: counts within 2 %, every mask matched at IoU >= 0.98."""
    assert abs(len(actual) - len(expected)) <= 0.02 * len(expected)
    assert _matched_ious(expected, actual).min() >= 0.98
    assert _matched_ious(actual, expected).min() >= 0.98


def _assert_same_decisions(expected: NDArray[np.bool_], actual: NDArray[np.bool_]) -> None:
    """In practice the decisions are the same ones, in the same order: mask i of one is mask i
    of the other. Pixels on a mask's edge may differ where the two paths' float rounding does
    (batched vs per-image kernels, and the thread count, change the last bits of a logit)."""
    assert len(actual) == len(expected)
    for a, b in zip(actual, expected, strict=True):
        assert np.logical_xor(a, b).sum() <= 0.001 * max(a.sum(), b.sum())


@pytest.mark.parametrize(
    ("shape", "settings"),
    [
        ((256, 256), AmgSettings(points_per_side=16)),  # the paper's 0.88 / 0.95 filters
        (
            (192, 256),
            AmgSettings(points_per_side=12, pred_iou_thresh=0.9, stability_score_thresh=0.9),
        ),
        ((256, 200), AmgSettings(points_per_side=8, crop_n_layers=1)),
        ((256, 256), AmgSettings(points_per_side=12, min_mask_region_area=60)),
        ((256, 256), AmgSettings(points_per_side=16, box_nms_thresh=0.5, points_per_batch=50)),
    ],
    ids=["paper-filters", "non-square", "crop-layers", "small-regions", "nms-and-batch"],
)
def test_fast_generator_gives_segment_anythings_masks(
    oracle_sam: Sam, farmland: NDArray[np.uint8], shape: tuple[int, int], settings: AmgSettings
) -> None:
    image = np.ascontiguousarray(farmland[: shape[0], : shape[1]])
    expected = _vanilla(oracle_sam, image, settings)
    generated = FastMaskGenerator(oracle_sam, settings).generate(image)
    assert len(expected) >= 5, "the case must produce masks to compare"
    actual = generated.masks.numpy()
    _assert_equivalent(expected, actual)
    assert generated.masks.dtype == torch.bool and actual.shape[1:] == shape
    _assert_same_decisions(expected, actual)


def test_random_weights_without_filters_give_the_same_masks(farmland: NDArray[np.uint8]) -> None:
    sam = build_tiny_sam()
    settings = AmgSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    expected = _vanilla(sam, farmland, settings)
    assert len(expected) > 20
    _assert_equivalent(expected, FastMaskGenerator(sam, settings).generate(farmland).masks.numpy())


def test_only_candidates_that_may_pass_are_upsampled(
    oracle_sam: Sam, farmland: NDArray[np.uint8]
) -> None:
    """segment_anything upsamples all 3 x 256 candidates; the fast path only possible ones."""
    generator = FastMaskGenerator(oracle_sam, AmgSettings(points_per_side=16))
    generated = generator.generate(farmland)
    counts = generator.counts
    assert counts["decoded"] == 3 * 16 * 16
    assert counts["upsampled"] <= counts["candidates"] < counts["decoded"] / 2
    assert len(generated) == counts["kept"] > 0


def test_unstable_candidates_are_dropped_at_low_resolution(farmland: NDArray[np.uint8]) -> None:
    """Random weights give unstable masks only: none of them is ever upsampled."""
    generator = FastMaskGenerator(
        build_tiny_sam(), AmgSettings(points_per_side=16, pred_iou_thresh=0.0)
    )
    assert len(generator.generate(farmland)) == 0
    assert generator.counts["candidates"] == 3 * 16 * 16
    assert generator.counts["upsampled"] == 0


def test_prompt_batches_are_sized_to_the_device_unless_set() -> None:
    sam = build_tiny_sam()
    assert FastMaskGenerator(sam, AmgSettings(points_per_side=6)).prompt_batch() == 36
    assert FastMaskGenerator(sam, AmgSettings(points_per_side=32)).prompt_batch() == 64
    assert FastMaskGenerator(sam, AmgSettings(points_per_batch=7)).prompt_batch() == 7
    assert AmgSettings().segment_anything_kwargs()["points_per_batch"] == 64


def test_images_share_encoder_calls_and_keep_their_own_masks(
    oracle_sam: Sam, farmland: NDArray[np.uint8]
) -> None:
    images = [farmland, _farmland(8), farmland[40:200, 10:250].copy()]
    settings = AmgSettings(points_per_side=12)
    encoder_calls = []
    hook = oracle_sam.image_encoder.patch_embed.register_forward_hook(
        lambda _m, args, _o: encoder_calls.append(len(args[0]))
    )
    try:
        generator = FastMaskGenerator(
            oracle_sam, settings, encoder=ImageEncoder(oracle_sam, max_batch=4)
        )
        batched = generator.generate_many(images)
    finally:
        hook.remove()
    assert encoder_calls == [3]
    for image, masks in zip(images, batched, strict=True):
        alone = FastMaskGenerator(oracle_sam, settings).generate(image)
        assert masks.masks.shape[1:] == image.shape[:2]
        assert torch.equal(masks.masks, alone.masks)


def test_fused_attention_matches_segment_anythings_and_bf16_stays_close() -> None:
    """fp32 fused: max abs difference < 1e-4. bf16: relative L2 error < 2 %."""
    sam = build_tiny_sam()
    image = _farmland(5)[:200]
    encoder = ImageEncoder(sam, precision="fp32")
    x = encoder.prepare(image)[None]
    with torch.inference_mode():
        reference = sam.image_encoder(x)
        fused = FusedImageEncoder(sam.image_encoder)(x)
        bf16 = ImageEncoder(sam, precision="bf16").encode([image])
    assert (fused - reference).abs().max().item() < 1e-4
    relative = (
        torch.linalg.vector_norm(bf16 - reference) / torch.linalg.vector_norm(reference)
    ).item()
    assert relative < 0.02
    assert bf16.dtype == torch.float32
    # The model itself is untouched: segment_anything's forward still runs its own attention.
    assert type(sam.image_encoder.blocks[0].attn).__name__ == "Attention"


def _loaded(sam: Sam) -> LoadedSam:
    return LoadedSam(
        name=TINY_MODEL_NAME,
        model=sam,
        device=torch.device("cpu"),
        checkpoint_sha256="oracle",
        architecture=TINY,
        settings={},
        origin="random",
    )


def test_mask_source_runs_either_generator_with_the_same_masks(
    oracle_sam: Sam, farmland: NDArray[np.uint8]
) -> None:
    window = Window(0, 0, 256, 256)
    fast = SamMaskSource(_loaded(oracle_sam), AmgSettings(points_per_side=12))
    vanilla = SamMaskSource(
        _loaded(oracle_sam), AmgSettings(points_per_side=12, generator="segment-anything")
    )
    a, b = fast.generate(farmland, window), vanilla.generate(farmland, window)
    assert isinstance(a, MaskSet) and len(a) == len(b) > 0
    _assert_same_decisions(b.masks, a.masks)
    # The fast source's sparse pixels were found on the device; they are the masks' own.
    assert "pixels" in a.__dict__ and (a.pixels != MaskSet.from_masks(a.masks).pixels).nnz == 0
    np.testing.assert_allclose(a.boxes, b.boxes, atol=1)
    np.testing.assert_allclose(a.predicted_iou, b.predicted_iou, rtol=1e-6)


class _Recording(SamMaskSource):
    def __init__(self, sam: LoadedSam, settings: AmgSettings) -> None:
        super().__init__(sam, settings)
        self.calls: list[int] = []

    def generate_many(self, images, regions):  # type: ignore[no-untyped-def]
        self.calls.append(len(images))
        return super().generate_many(images, regions)


def test_tiles_segmented_together_get_the_results_they_get_alone(oracle_sam: Sam) -> None:
    """Lockstep rounds and one call for all refinement crops change nothing in the result."""
    images = [_farmland(s) for s in (1, 2)]
    config = EngineConfig(
        amg=AmgSettings(points_per_side=12, pred_iou_thresh=0.8, stability_score_thresh=0.8),
        working_size=None,
    ).model_copy(update={"refine": EngineConfig().refine.model_copy(update={"min_area": 2000})})
    source = _Recording(_loaded(oracle_sam), config.amg)
    together = segment_images(images, source, config)
    assert source.calls[0] == 2  # round 1 of both tiles: one encoder batch
    refined = [r.refinement for r in together]
    assert any(r is not None and r.under_segmented for r in refined)
    for image, result in zip(images, together, strict=True):
        alone = segment_image(image, SamMaskSource(_loaded(oracle_sam), config.amg), config)
        np.testing.assert_array_equal(result.labels, alone.labels)


def test_a_bf16_decoder_moves_mask_edges_only(farmland: NDArray[np.uint8]) -> None:
    """Decoder in bf16 (an option for GPUs, off by default): the same masks, edges moved.

    It does not meet the fp32 path's criterion (every mask at IoU >= 0.98): on this model
    the median mask matches exactly and nine in ten at 0.95 or more; the worst one moves
    most (IoU 0.79–0.91, by CPU and thread count, as bf16 rounding depends on the kernels).
    The tiny model's logits are scaled up (a trained SAM's are large) so that bf16 rounding
    moves mask edges rather than the sign of near-zero logits everywhere.
    """
    sam = build_tiny_sam()
    with torch.no_grad():
        for mlp in sam.mask_decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight *= 200
            mlp.layers[-1].bias *= 200
    settings = AmgSettings(
        points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0
    )
    fp32 = FastMaskGenerator(sam, settings).generate(farmland).masks.numpy()
    bf16_settings = settings.model_copy(update={"decoder_precision": "bf16"})
    bf16 = FastMaskGenerator(sam, bf16_settings).generate(farmland).masks.numpy()
    assert len(fp32) == len(bf16) == 3 * 36
    matched = _matched_ious(fp32, bf16)
    assert np.median(matched) >= 0.99
    assert np.percentile(matched, 10) >= 0.95
    assert matched.min() >= 0.7


def test_sources_built_per_tile_share_one_encoder_per_model(oracle_sam: Sam) -> None:
    """A compiled encoder must not be rebuilt (recompiled) for every tile's source."""
    settings = AmgSettings(points_per_side=4)
    a, b = FastMaskGenerator(oracle_sam, settings), FastMaskGenerator(oracle_sam, settings)
    assert a.encoder is b.encoder
    other = settings.model_copy(update={"encoder_precision": "bf16"})
    assert FastMaskGenerator(oracle_sam, other).encoder is not a.encoder


def test_prompts_on_whitened_pixels_are_not_decoded_when_asked(
    oracle_sam: Sam, farmland: NDArray[np.uint8]
) -> None:
    image = farmland.copy()
    image[:, :128] = 255  # the left half painted over, as whitening does between rounds
    settings = AmgSettings(points_per_side=8, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    every = FastMaskGenerator(oracle_sam, settings)
    all_masks = every.generate(image)
    skipping = FastMaskGenerator(
        oracle_sam, settings.model_copy(update={"skip_white_prompts": True})
    )
    kept = skipping.generate(image)

    assert every.counts["decoded"] == 3 * 64
    assert skipping.counts["decoded"] == 3 * 32  # only the grid points on the right half
    assert len(kept) > 0 and (kept.points[:, 0] >= 128).all()
    assert len(kept) < len(all_masks)
    # A point off white decodes as before: its masks are among those of the full grid.
    full = {tuple(p) for p in all_masks.points.tolist()}
    assert {tuple(p) for p in kept.points.tolist()} <= full

    white = np.full_like(farmland, 255)
    assert len(FastMaskGenerator(oracle_sam, skipping.settings).generate(white)) == 0
