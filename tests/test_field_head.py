"""The dense field head: its maps, its targets and loss, its training inside `train_sam`, and
what the engine makes of it (learned prompts, the head's own instances)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.windows import Window

from lisegagr_core.architectures import TINY
from lisegagr_core.config import AmgSettings, EngineConfig
from lisegagr_core.encoder import ImageEncoder
from lisegagr_core.engine import segment_image
from lisegagr_core.errors import InputError
from lisegagr_core.field_head import (
    BOUNDARY,
    DEPTH,
    EXTENT,
    FieldHead,
    field_head_of,
    head_loss,
    head_targets,
)
from lisegagr_core.field_maps import (
    FieldMaps,
    head_instances,
    head_prompts,
    instances_as_masks,
    predict_field_maps,
)
from lisegagr_core.metrics import score_partition
from lisegagr_core.models import LoadedSam, build_sam, clear_model_cache
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.standins.farmland import make_farmland_scene
from lisegagr_core.training import TrainConfig, TrainingSet, train_sam
from lisegagr_core.training.data import TrainingImage
from lisegagr_core.training.trainer import initial_model
from lisegagr_core.training.warm_start import adapt_state_dict

TINY_HEAD = dataclasses.replace(TINY, image_size=128, field_head_width=4)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_model_cache()
    yield
    torch.set_num_threads(threads)
    clear_model_cache()


def _loaded() -> LoadedSam:
    torch.manual_seed(0)
    sam = build_sam(TINY_HEAD).eval()
    return LoadedSam("tiny-head", sam, torch.device("cpu"), "0" * 64, TINY_HEAD, {}, "file")


def _truth_maps(instances: np.ndarray) -> FieldMaps:
    """The maps a perfect head would give: the training targets of `instances`."""
    targets = head_targets(torch.from_numpy(instances.astype(np.int32))[None])
    return FieldMaps(
        extent=targets.extent[0].numpy().astype(np.float32),
        boundary=targets.boundary[0].numpy().astype(np.float32),
        depth=targets.depth[0].numpy(),
    )


# --- the head -------------------------------------------------------------------------------


def test_head_maps_have_the_input_size_and_probabilities_lie_in_0_1() -> None:
    head = FieldHead(width=4, embed_dim=32).eval()
    image = torch.randn(2, 3, 128, 128)
    embedding = torch.randn(2, 32, 8, 8)
    logits = head(image, embedding)
    assert logits.shape == (2, 3, 128, 128)
    maps = predict_field_maps(
        _loaded().model, ImageEncoder(_loaded().model), [np.zeros((100, 60, 3), np.uint8)]
    )[0]
    assert maps.shape == (100, 60)
    for values in (maps.extent, maps.boundary, maps.depth):
        assert values.dtype == np.float32 and values.min() >= 0.0 and values.max() <= 1.0


def test_mirrored_maps_are_the_same_for_an_image_and_its_mirror() -> None:
    """Test-time mirroring (amg.head_mirror) makes the head's maps equivariant to a left-right
    flip, which a network alone is not."""
    sam = _loaded().model
    encoder = ImageEncoder(sam)
    image = make_farmland_scene(96, seed=3).rgb
    flipped = np.ascontiguousarray(image[:, ::-1])
    plain = predict_field_maps(sam, encoder, [image, flipped])
    assert not np.allclose(plain[0].boundary, plain[1].boundary[:, ::-1], atol=1e-4)
    one, other = predict_field_maps(sam, encoder, [image, flipped], mirror=True)
    for name in ("extent", "boundary", "depth"):
        np.testing.assert_allclose(getattr(one, name), getattr(other, name)[:, ::-1], atol=1e-5)


def test_the_head_mask_generator_mirrors_when_its_settings_say_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import lisegagr_core.field_maps as field_maps

    asked: list[bool] = []
    real = field_maps.predict_field_maps

    def recording(*args: object, mirror: bool = False, **kwargs: object) -> list[FieldMaps]:
        asked.append(mirror)
        return real(*args, mirror=mirror, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(field_maps, "predict_field_maps", recording)
    image = make_farmland_scene(96, seed=3).rgb
    for mirror in (False, True):
        settings = AmgSettings(generator="field-head", head_mirror=mirror)
        field_maps.HeadMaskGenerator(_loaded().model, settings).generate_many([image])
    assert asked == [False, True, False]  # plain; mirrored, which maps the mirror plainly


def test_a_model_built_with_a_head_width_carries_the_head_in_its_state_dict() -> None:
    sam = build_sam(TINY_HEAD)
    assert isinstance(field_head_of(sam), FieldHead)
    assert any(key.startswith("field_head.") for key in sam.state_dict())
    assert field_head_of(build_sam(TINY)) is None
    assert "field_head_width" not in TINY.to_dict()  # records of headless models unchanged


def test_targets_outline_each_field_and_depth_peaks_inside_it() -> None:
    labels = torch.zeros(1, 40, 60, dtype=torch.int32)
    labels[0, 5:35, 5:28] = 1
    labels[0, 5:35, 28:55] = 2  # touching field 1: the shared edge is a boundary
    labels[0, :, 58:] = -1  # padding
    targets = head_targets(labels)
    assert targets.boundary[0, 20, 27] and targets.boundary[0, 20, 28]  # the shared edge
    assert targets.boundary[0, 4, 15] and targets.boundary[0, 5, 15]  # field / ground
    assert not targets.boundary[0, 20, 15]  # inside a field
    assert not targets.boundary[0, 20, 57]  # ground next to padding is no boundary
    assert not targets.valid[0, 0, 59]
    depth = targets.depth[0]
    assert float(depth.max()) == pytest.approx(1.0)
    assert float(depth[0, 0]) == 0.0  # ground
    assert float(depth[20, 16]) > 0.8  # the middle of field 1
    assert float(depth[6, 16]) < 0.3  # near its outline


def test_loss_is_lower_for_maps_that_match_the_targets() -> None:
    labels = torch.zeros(1, 32, 32, dtype=torch.int32)
    labels[0, 4:28, 4:16] = 1
    labels[0, 4:28, 16:28] = 2
    targets = head_targets(labels)
    right = torch.stack([targets.extent.float(), targets.boundary.float(), targets.depth], dim=1)
    good = head_loss((right - 0.5) * 20, targets)
    bad = head_loss((0.5 - right) * 20, targets)
    assert float(good.total) < float(bad.total)
    assert float(good.extent) < 0.01 and float(good.boundary) < 0.01
    assert float(good.extent) < float(bad.extent)
    assert float(good.boundary) < float(bad.boundary)
    assert float(good.depth) < float(bad.depth)


# --- learned prompts and the head's instances ------------------------------------------------


def test_learned_prompts_land_one_inside_each_field_of_a_synthetic_scene() -> None:
    scene = make_farmland_scene(256, seed=3)
    maps = _truth_maps(scene.instances)
    points = head_prompts(maps, AmgSettings(head_min_seed_area=20))
    hit = scene.instances[points[:, 1].astype(int), points[:, 0].astype(int)]
    assert (hit > 0).all()  # every prompt inside a field
    assert len(set(hit.tolist())) == len(hit)  # no field prompted twice
    areas = np.bincount(scene.instances.ravel())
    seen = {f for f in scene.field_ids if areas[f] >= 200}
    assert seen <= set(hit.tolist())  # every field of some size gets its prompt
    # off the whitened part of a later round
    allowed = np.ones(maps.shape, dtype=bool)
    allowed[:, :128] = False
    later = head_prompts(maps, AmgSettings(head_min_seed_area=20), allowed)
    assert (later[:, 0] >= 128).all()


def test_head_instances_of_perfect_maps_are_the_fields() -> None:
    scene = make_farmland_scene(256, seed=5)
    labels = head_instances(_truth_maps(scene.instances), AmgSettings(head_min_seed_area=20))
    scores = score_partition(scene.instances, labels)
    assert scores.f1 > 0.9 and scores.pixel_iou > 0.95
    masks = instances_as_masks(labels, _truth_maps(scene.instances))
    assert len(masks) == int(labels.max())
    assert (masks.predicted_iou > 0.9).all()


def test_the_engine_takes_learned_prompts_and_head_masks_from_a_model_with_a_head() -> None:
    loaded = _loaded()
    image = make_farmland_scene(128, seed=1).rgb
    config = EngineConfig(
        amg=AmgSettings(
            points_per_side=4,
            pred_iou_thresh=0.0,
            stability_score_thresh=0.0,
            prompts="field-head",
            head_extent_thresh=0.01,
            head_boundary_thresh=1.0,
            head_min_seed_area=1,
        ),
        working_size=None,
    )
    with_prompts = SamMaskSource(loaded, config.amg)
    assert with_prompts._fast is not None
    masks = with_prompts.generate(image, Window(0, 0, 128, 128))
    # one prompt per seed: each decoded into at most 3 masks, not 3 per grid point
    seeds = head_prompts(
        predict_field_maps(loaded.model, ImageEncoder(loaded.model), [image])[0], config.amg
    )
    assert len(masks) <= 3 * len(seeds)
    head_config = config.model_copy(
        update={"amg": config.amg.model_copy(update={"generator": "field-head"})}
    )
    head_source = SamMaskSource(loaded, head_config.amg)
    assert head_source.name.startswith("field-head:")
    segmentation = segment_image(image, head_source, head_config)
    assert segmentation.labels.shape == (128, 128)


def test_learned_prompts_on_a_model_without_a_head_are_refused_in_one_sentence() -> None:
    torch.manual_seed(0)
    arch = dataclasses.replace(TINY, image_size=128)
    loaded = LoadedSam(
        "plain", build_sam(arch).eval(), torch.device("cpu"), "0" * 64, arch, {}, "file"
    )
    with pytest.raises(InputError, match="plain has no field head"):
        SamMaskSource(loaded, AmgSettings(prompts="field-head"))


# --- training ----------------------------------------------------------------------------------


def _synthetic_set(count: int, size: int = 128) -> TrainingSet:
    images = []
    for seed in range(count):
        scene = make_farmland_scene(size, seed=seed)
        images.append(TrainingImage(f"scene-{seed}", scene.rgb, scene.instances.astype(np.int32)))
    return TrainingSet(source="synthetic", train=tuple(images[:-1]), validation=tuple(images[-1:]))


def _head_config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "architecture": dataclasses.replace(TINY, image_size=128).to_dict(),
        "field_head_width": 4,
        "steps": 12,
        "warmup_steps": 2,
        "batch_size": 3,
        "field_prompts": 4,
        "background_prompts": 1,
        "lr": 1e-3,
        "head_lr": 5e-3,
        "val_every": 12,
        "checkpoint_every": 12,
        "log_every": 4,
        "device": "cpu",
    }
    return TrainConfig.model_validate({**values, **changes})


def test_training_learns_the_head_jointly_and_saves_it_in_the_model(tmp_path: Path) -> None:
    result = train_sam(_synthetic_set(4), tmp_path / "with-head.pt", _head_config())
    rows = result.history.train
    assert {"extent_loss", "boundary_loss", "depth_loss"} <= set(rows[0])
    assert rows[-1]["extent_loss"] < rows[0]["extent_loss"]
    validation = result.history.validation[-1]
    assert 0.0 <= validation["extent_iou"] <= 1.0
    saved = torch.load(result.model_path, weights_only=True)
    assert any(key.startswith("field_head.") for key in saved)
    assert result.architecture.field_head_width == 4
    card = result.card_path.read_text()
    assert "| field head |" in card and "Field head, every pixel of the held-out images" in card


def test_a_frozen_encoder_is_left_as_it_was(tmp_path: Path) -> None:
    config = _head_config(freeze_encoder=True, steps=3, val_every=3, checkpoint_every=3)
    result = train_sam(_synthetic_set(3), tmp_path / "frozen.pt", config)
    start = initial_model(config.sam_architecture(), config.seed)
    saved = torch.load(result.model_path, weights_only=True)
    key = "image_encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(saved[key], start.state_dict()[key].half())
    head_key = next(k for k in saved if k.startswith("field_head.") and k.endswith("weight"))
    assert not torch.equal(saved[head_key], start.state_dict()[head_key].half())


def test_warm_start_from_a_headless_model_gives_it_a_fresh_head() -> None:
    headless = build_sam(dataclasses.replace(TINY_HEAD, field_head_width=0)).state_dict()
    target = build_sam(TINY_HEAD).state_dict()
    adapted = adapt_state_dict(headless, target, "the source")
    assert set(adapted) == set(target)
    for key in headless:
        assert torch.equal(adapted[key], headless[key])
    with pytest.raises(InputError, match="the source cannot start this training"):
        adapt_state_dict(target, headless, "the source")  # a head the target lacks


def test_maps_channels_are_extent_boundary_depth() -> None:
    assert (EXTENT, BOUNDARY, DEPTH) == (0, 1, 2)


def test_head_clip_cuts_every_sam_mask_to_the_heads_extent() -> None:
    loaded = _loaded()
    image = make_farmland_scene(128, seed=2).rgb
    values = predict_field_maps(loaded.model, ImageEncoder(loaded.model), [image])[0].extent
    threshold = float(np.median(values))  # random weights: half the image is "field"
    settings = AmgSettings(
        points_per_side=4,
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
        head_extent_thresh=threshold,
    )
    plain = SamMaskSource(loaded, settings).generate(image, Window(0, 0, 128, 128))
    clipped_settings = settings.model_copy(update={"head_clip": True})
    clipped = SamMaskSource(loaded, clipped_settings).generate(image, Window(0, 0, 128, 128))
    extent = values > threshold
    assert len(plain) and not (plain.union() <= extent).all()  # SAM's masks leave the extent
    assert (clipped.union() <= extent).all()
