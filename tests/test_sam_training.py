"""Training the project's own SAM: prompts, batched decoding, loss, a real (tiny) run on NAIP
imagery, determinism, resume, the saved file, registration, evaluation and the CLI."""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as reproject_points
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import get_rel_pos
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.architectures import TINY, SamArchitecture
from lisegagr_core.config import AmgSettings, EngineConfig
from lisegagr_core.engine import segment_image
from lisegagr_core.errors import InputError
from lisegagr_core.imagery import resize_labels, resize_to_working_size
from lisegagr_core.metrics import score_partition
from lisegagr_core.models import LoadedSam, build_sam, build_tiny_sam, clear_model_cache, load_sam
from lisegagr_core.progress import ProgressUpdate
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.training import (
    PIPELINES,
    AugmentSettings,
    EvaluationGrid,
    TrainConfig,
    TrainingResult,
    TrainingSet,
    evaluate_model,
    find_annotated_images,
    load_scenes,
    load_training_set,
    read_scene,
    register_model,
    split_by_image,
    train_sam,
    with_source_architecture,
)
from lisegagr_core.training.augment import augment_batch
from lisegagr_core.training.objective import decode_prompts, prompt_loss
from lisegagr_core.training.prompts import interior_pixels, prompt_targets, sample_prompts
from lisegagr_core.training.warm_start import warm_start
from lisegagr_core.weights import Manifest, sha256_file
from tests.naip import naip_names

runner = CliRunner()

NAIP_IMAGES = 4
# A TINY SAM at 128 px (an 8 × 8 embedding grid, one window): seconds per run on a CPU.
TINY_128 = dataclasses.replace(TINY, image_size=128)


def tiny_config(**changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "architecture": TINY_128.to_dict(),
        "steps": 20,
        "warmup_steps": 2,
        "batch_size": 3,
        "field_prompts": 8,
        "background_prompts": 2,
        "lr": 1e-3,
        "val_every": 10,
        "checkpoint_every": 10,
        "log_every": 5,
        "device": "cpu",
    }
    return TrainConfig.model_validate({**values, **changes})


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads; on a busy 2-core machine OpenMP barriers make
    them several times slower. (Two-thread runs are deterministic too: see the trainer.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def fresh_model_cache() -> Iterator[None]:
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture(scope="module")
def naip_via(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A VIA file of the first NAIP images, with the shared images folder linked beside it."""
    folder = tmp_path_factory.mktemp("naip-via")
    source = shared_data / "agoro-naip"
    everything = json.loads((source / "annotations.json").read_text())
    chosen = naip_names(shared_data)[:NAIP_IMAGES]
    (folder / "annotations.json").write_text(json.dumps({k: everything[k] for k in chosen}))
    (folder / "images").symlink_to(source / "images")
    return folder / "annotations.json"


@pytest.fixture(scope="module")
def naip_128(naip_via: Path) -> TrainingSet:
    """3 training and 1 validation NAIP images, area-downsampled to 128 px."""
    return load_training_set(naip_via, 128, val_fraction=0.25, seed=0)


@pytest.fixture(scope="module")
def trained(naip_128: TrainingSet, tmp_path_factory: pytest.TempPathFactory) -> TrainingResult:
    folder = tmp_path_factory.mktemp("weights")
    return train_sam(
        naip_128,
        folder / "fields-test.pt",
        tiny_config(),
        checkpoint_dir=folder / "checkpoints",
    )


# --- prompts -------------------------------------------------------------------------------


def _labels_with_fields() -> torch.Tensor:
    """(2, 40, 40) int32: image 0 has three fields and ground, image 1 one field and padding."""
    labels = torch.zeros(2, 40, 40, dtype=torch.int32)
    labels[0, 2:20, 2:30] = 1
    labels[0, 22:38, 5:15] = 2
    labels[0, 22:38, 15:25] = 3
    labels[0, 30:33, 30:33] = 4  # too small for a 7 × 7 interior
    labels[1, :, 25:] = -1
    labels[1, 5:35, 0:20] = 7
    return labels


def test_interior_pixels_are_those_whose_whole_neighbourhood_has_one_label() -> None:
    labels = _labels_with_fields()

    interior = interior_pixels(labels, 7).numpy()

    padded = np.pad(labels.numpy(), ((0, 0), (3, 3), (3, 3)), constant_values=-99)
    for b, row, col in np.ndindex(*labels.shape):
        window = padded[b, row : row + 7, col : col + 7]
        assert interior[b, row, col] == (np.unique(window[window != -99]).size == 1)


def test_prompts_are_interior_one_per_field_and_ground_points_avoid_padding() -> None:
    labels = _labels_with_fields()
    interior = interior_pixels(labels, 7)

    prompts = sample_prompts(
        labels,
        field_prompts=2,
        background_prompts=5,
        interior_size=7,
        generator=torch.Generator().manual_seed(0),
    )

    cols, rows = prompts.points.long().unbind(1)
    assert interior[prompts.image_index, rows, cols].all()
    assert torch.equal(labels[prompts.image_index, rows, cols].long(), prompts.field_id)
    fields = prompts.field_id[prompts.is_field]
    images = prompts.image_index[prompts.is_field]
    assert sorted(fields[images == 0].tolist()) in ([1, 2], [1, 3], [2, 3])  # 2 of 3, no 4
    assert fields[images == 1].tolist() == [7]
    ground = prompts.image_index[~prompts.is_field]
    assert ground.tolist().count(0) == 5 and ground.tolist().count(1) == 5


def test_prompt_targets_are_the_prompted_field_at_decoder_resolution() -> None:
    labels = _labels_with_fields()
    prompts = sample_prompts(
        labels,
        field_prompts=4,
        background_prompts=1,
        interior_size=7,
        generator=torch.Generator().manual_seed(1),
    )

    targets = prompt_targets(labels, prompts, 10)

    for n in range(len(prompts)):
        expected = labels[prompts.image_index[n], 2::4, 2::4] == prompts.field_id[n]
        assert torch.equal(targets[n], expected & prompts.is_field[n])


# --- augmentation, decoder, loss --------------------------------------------------------------


def test_augmentation_moves_labels_with_their_pixels() -> None:
    labels = torch.randint(0, 5, (8, 32, 32), generator=torch.Generator().manual_seed(0))
    images = (labels * 50).to(torch.uint8).unsqueeze(1).expand(-1, 3, -1, -1)
    rigid = AugmentSettings(
        crop_min=1.0, saturation=(1.0, 1.0), contrast=(1.0, 1.0), brightness=(1.0, 1.0)
    )

    moved, moved_labels = augment_batch(images, labels, rigid, torch.Generator().manual_seed(0))

    torch.testing.assert_close(moved[:, 0], moved_labels.float() * 50, atol=1e-3, rtol=0)
    for turned, original in zip(moved_labels, labels, strict=True):
        symmetries = [
            torch.rot90(mirrored, k, (0, 1)).int()
            for mirrored in (original, original.flip(1))
            for k in range(4)
        ]
        assert any(torch.equal(turned, symmetry) for symmetry in symmetries)


def test_crops_zoom_in_and_colour_changes_stay_in_range() -> None:
    labels = torch.arange(64 * 64).reshape(1, 64, 64).expand(6, -1, -1).int()
    images = torch.randint(0, 256, (6, 3, 64, 64), generator=torch.Generator().manual_seed(0))

    moved, moved_labels = augment_batch(
        images.to(torch.uint8), labels, AugmentSettings(), torch.Generator().manual_seed(1)
    )

    assert moved.min() >= 0 and moved.max() <= 255
    visible = [crop.unique().numel() for crop in moved_labels]  # pixels of the source shown
    assert all(0.9 * 0.5**2 * 64 * 64 <= count <= 64 * 64 for count in visible)
    assert min(visible) < 0.9 * 64 * 64


def test_batched_decoder_gives_the_masks_of_a_loop_over_images() -> None:
    sam = build_tiny_sam(seed=0)
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(3, 32, 16, 16, generator=generator)
    image_index = torch.tensor([2, 0, 0, 1, 2, 2, 0])
    points = torch.randint(0, 256, (7, 2), generator=generator).float()

    with torch.no_grad():
        masks, iou_pred = decode_prompts(sam, embeddings, image_index, points)
        for b in range(3):
            mine = image_index == b
            sparse, dense = sam.prompt_encoder(
                points=(points[mine].unsqueeze(1), torch.ones(int(mine.sum()), 1)),
                boxes=None,
                masks=None,
            )
            expected_masks, expected_iou = sam.mask_decoder(
                image_embeddings=embeddings[b : b + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=True,
            )
            torch.testing.assert_close(masks[mine], expected_masks, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(iou_pred[mine], expected_iou, atol=1e-5, rtol=1e-4)
    assert masks.shape == (7, 3, 64, 64) and iou_pred.shape == (7, 3)


def _square(offset: int) -> torch.Tensor:
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8 + offset : 20 + offset, 8:20] = True
    return mask


def _logits(*masks: torch.Tensor) -> torch.Tensor:
    """(1, 3, 32, 32): ±8 logits of three masks."""
    return torch.stack([torch.where(m, 8.0, -8.0) for m in masks]).unsqueeze(0)


def test_loss_is_lower_for_the_right_mask_than_a_wrong_one() -> None:
    target = _square(0).unsqueeze(0)
    iou_pred = torch.full((1, 3), 0.5)
    is_field = torch.tensor([True])
    right, wrong = _square(0), _square(12)

    right_loss = prompt_loss(_logits(right, right, right), iou_pred, target, is_field)
    wrong_loss = prompt_loss(_logits(wrong, wrong, wrong), iou_pred, target, is_field)
    best_of_three = prompt_loss(_logits(wrong, right, wrong), iou_pred, target, is_field)

    assert right_loss.total < wrong_loss.total
    assert best_of_three.mask == pytest.approx(float(right_loss.mask))
    assert float(best_of_three.chosen_iou) == 0.0  # the IoU head ranks output 0 first
    assert float(best_of_three.best_iou) == 1.0


def test_ground_prompts_only_teach_the_iou_head_a_score_of_zero() -> None:
    iou_pred = torch.tensor([[0.2, 0.4, 0.0]])

    terms = prompt_loss(
        _logits(_square(0), _square(0), _square(0)),
        iou_pred,
        torch.zeros(1, 32, 32, dtype=torch.bool),
        torch.tensor([False]),
    )

    assert float(terms.mask) == 0.0
    assert float(terms.iou) == pytest.approx((0.04 + 0.16) / 3)
    assert float(terms.total) == pytest.approx(float(terms.iou))


def test_learning_rate_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(steps=100, warmup_steps=10, lr=1e-3)

    rates = [config.lr_at(step) for step in range(100)]

    assert rates[0] == pytest.approx(1e-4) and rates[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert rates[-1] < 1e-6


# --- data ----------------------------------------------------------------------------------


def test_split_by_image_is_seeded_disjoint_and_keeps_training_images() -> None:
    names = [f"image{i}.png" for i in range(30)]

    train, validation = split_by_image(names, 0.2, seed=3)

    assert (train, validation) == split_by_image(list(reversed(names)), 0.2, seed=3)
    assert len(validation) == 6 and not set(train) & set(validation)
    assert split_by_image(names[:1], 0.5, seed=0) == (names[:1], [])
    assert len(split_by_image(names[:2], 0.9, seed=0)[0]) == 1


def _write_png(path: Path, shape: tuple[int, int] = (80, 100)) -> None:
    cv2.imwrite(str(path), np.full((*shape, 3), 90, np.uint8))


def test_labelme_folder_is_read_and_rasterised(tmp_path: Path) -> None:
    _write_png(tmp_path / "farm.png")
    shapes = [
        {"label": "1", "points": [[10, 10], [50, 10], [50, 40], [10, 40]], "shape_type": "polygon"},
        {"label": "1", "points": [[60, 20], [90, 70]], "shape_type": "rectangle"},
    ]
    (tmp_path / "farm.json").write_text(json.dumps({"imagePath": "farm.png", "shapes": shapes}))
    (tmp_path / "notes.json").write_text(json.dumps({"unrelated": True}))

    [source] = find_annotated_images(tmp_path)
    scene = read_scene(source)

    assert source.name == "farm.png" and len(source.polygons) == 2
    assert scene.instances.shape == (80, 100)
    assert (scene.instances == 1).sum() == 40 * 30 and (scene.instances == 2).sum() == 30 * 50


def test_geojson_in_longitude_latitude_is_placed_on_a_utm_raster(tmp_path: Path) -> None:
    transform = Affine(10.0, 0, 500_000.0, 0, -10.0, 5_000_000.0)  # UTM 33N, 10 m pixels
    with rasterio.open(
        tmp_path / "tile.tif",
        "w",
        driver="GTiff",
        width=64,
        height=64,
        count=3,
        dtype="uint8",
        crs=CRS.from_epsg(32633),
        transform=transform,
    ) as out:
        out.write(np.full((3, 64, 64), 120, np.uint8))
    xs, ys = [500_100.0, 500_400.0, 500_400.0, 500_100.0], [4_999_900.0] * 2 + [4_999_600.0] * 2
    lons, lats = reproject_points(CRS.from_epsg(32633), CRS.from_epsg(4326), xs, ys)
    ring = [[lon, lat] for lon, lat in zip(lons, lats, strict=True)]
    feature = {
        "type": "Feature",
        "properties": {},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }
    (tmp_path / "tile.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "features": [feature]})
    )

    [scene] = load_scenes(tmp_path)

    rows, cols = np.nonzero(scene.instances)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 39, 10, 39)


def test_data_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no annotated images found"):
        find_annotated_images(tmp_path)

    via = tmp_path / "annotations.json"
    via.write_text(json.dumps({"gone.png": {"filename": "gone.png", "regions": []}}))
    with pytest.raises(InputError, match=r"annotations\.json names 1 images found neither"):
        find_annotated_images(via)

    _write_png(tmp_path / "gone.png")
    with pytest.raises(InputError, match="hold no polygons"):
        find_annotated_images(via)


# --- a real run -----------------------------------------------------------------------------


@pytest.mark.shared_data
def test_tiny_sam_learns_on_real_naip_fields(
    trained: TrainingResult, naip_128: TrainingSet
) -> None:
    losses = [row["loss"] for row in trained.history.train]

    assert naip_128.counts()["train_images"] == 3 and naip_128.counts()["validation_images"] == 1
    assert losses[-1] < 0.9 * losses[0]
    validation = trained.history.validation
    assert [row["step"] for row in validation] == [10, 20]
    assert validation[-1]["loss"] < validation[0]["loss"]
    summary = json.loads(trained.summary_path.read_text())
    assert summary["sha256"] == sha256_file(trained.model_path)
    assert summary["data"]["validation_names"] == list(trained.validation_names)
    assert "not Meta's Segment Anything" in trained.card_path.read_text()


@pytest.mark.shared_data
def test_saved_model_is_a_small_fp16_state_dict(trained: TrainingResult) -> None:
    state = torch.load(trained.model_path, map_location="cpu", weights_only=True)

    assert {t.dtype for t in state.values() if t.is_floating_point()} == {torch.float16}
    assert trained.model_path.stat().st_size <= 25 * 10**6


@pytest.mark.shared_data
def test_registered_model_loads_by_name_from_its_manifest(trained: TrainingResult) -> None:
    weights_dir = trained.model_path.parent
    register_model(
        weights_dir / "manifest.json",
        trained.model_path,
        trained.architecture,
        settings={"points_per_side": 4},
        card_path=trained.card_path,
    )
    manifest = Manifest.load(weights_dir / "manifest.json")

    loaded = load_sam("fields-test", weights_dir=weights_dir, manifest=manifest, device="cpu")

    assert manifest.entries["fields-test"].card == "fields-test.md"
    assert loaded.origin == "project" and loaded.architecture == TINY_128
    assert loaded.settings == {"points_per_side": 4}
    saved = torch.load(trained.model_path, weights_only=True)
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, saved[key].float()), key


def _weights(result: TrainingResult) -> dict[str, torch.Tensor]:
    # Not the file's sha256: torch.save names the archive's folder after the file.
    return torch.load(result.model_path, weights_only=True)


def _same_weights(a: TrainingResult, b: TrainingResult) -> bool:
    first, second = _weights(a), _weights(b)
    return first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.shared_data
def test_same_seed_gives_identical_weights_and_resume_continues_exactly(
    naip_128: TrainingSet, tmp_path: Path
) -> None:
    config = tiny_config(steps=6, checkpoint_every=3, val_every=3, log_every=3)
    checkpoints = tmp_path / "checkpoints"
    first = train_sam(naip_128, tmp_path / "a.pt", config, checkpoint_dir=checkpoints)
    again = train_sam(naip_128, tmp_path / "b.pt", config)
    (checkpoints / "step-000006.pt").unlink()
    updates: list[ProgressUpdate] = []
    resumed = train_sam(
        naip_128, tmp_path / "c.pt", config, checkpoint_dir=checkpoints, progress=updates.append
    )
    other_seed = train_sam(
        naip_128,
        tmp_path / "d.pt",
        config.model_copy(update={"seed": 1, "steps": 1}),
    )
    one_step = train_sam(naip_128, tmp_path / "e.pt", config.model_copy(update={"steps": 1}))

    assert _same_weights(first, again)
    assert _same_weights(first, resumed)
    # resumed from the step-3 checkpoint
    assert [(u.task, u.done, u.total) for u in updates] == [
        ("training", n, 6) for n in (3, 4, 5, 6)
    ]
    assert resumed.history.validation == first.history.validation
    assert [row["loss"] for row in resumed.history.train] == [
        row["loss"] for row in first.history.train
    ]
    assert not _same_weights(other_seed, one_step)


@pytest.mark.shared_data
def test_resume_refuses_a_checkpoint_of_other_settings(
    naip_128: TrainingSet, tmp_path: Path
) -> None:
    train_sam(naip_128, tmp_path / "a.pt", tiny_config(steps=1), checkpoint_dir=tmp_path)

    with pytest.raises(InputError, match=r"other settings \(lr\)"):
        train_sam(
            naip_128,
            tmp_path / "b.pt",
            tiny_config(steps=1, lr=2e-3),
            checkpoint_dir=tmp_path,
        )


# --- fine-tuning from a trained model ---------------------------------------------------------


def _loaded(sam: Sam, arch: SamArchitecture) -> LoadedSam:
    return LoadedSam("source", sam, torch.device("cpu"), "0" * 64, arch, {}, "file")


def test_warm_start_copies_weights_and_resizes_positional_tables_as_segment_anything_would() -> (
    None
):
    larger = dataclasses.replace(TINY_128, image_size=192)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        source_128 = build_sam(TINY_128)
        torch.nn.init.normal_(source_128.image_encoder.pos_embed)  # SAM starts it at zero
        target = build_sam(larger)

    warm_start(target, _loaded(source_128, TINY_128))

    before, after = source_128.state_dict(), target.state_dict()
    for key, tensor in after.items():
        if "pos_embed" not in key and "rel_pos" not in key:
            assert torch.equal(tensor, before[key]), key
    assert after["image_encoder.pos_embed"].shape == (1, 12, 12, 64)
    assert not torch.equal(after["image_encoder.pos_embed"], torch.zeros(1, 12, 12, 64))
    # the global-attention block's table, as segment_anything's get_rel_pos reads the original
    table = "image_encoder.blocks.1.attn.rel_pos_h"
    assert after[table].shape[0] == 2 * 12 - 1 != before[table].shape[0]
    assert torch.allclose(get_rel_pos(12, 12, after[table]), get_rel_pos(12, 12, before[table]))
    # windowed blocks keep their tables unchanged
    assert torch.equal(
        after["image_encoder.blocks.0.attn.rel_pos_h"],
        before["image_encoder.blocks.0.attn.rel_pos_h"],
    )


def test_warm_start_refuses_a_model_of_another_width_in_one_sentence() -> None:
    wider = dataclasses.replace(TINY_128, encoder_embed_dim=96, encoder_num_heads=2)

    with pytest.raises(
        InputError, match=r"source \(.*\) cannot start this training: .* only the input"
    ):
        warm_start(build_sam(TINY_128), _loaded(build_sam(wider), wider))


@pytest.mark.shared_data
def test_fine_tuning_starts_from_the_named_model_at_another_input_size(
    trained: TrainingResult, naip_via: Path, tmp_path: Path
) -> None:
    at_160 = load_training_set(naip_via, 160, val_fraction=0.25, seed=0)
    register_model(
        trained.model_path.parent / "manifest.json", trained.model_path, trained.architecture
    )
    config = tiny_config(
        architecture=dataclasses.replace(TINY_128, image_size=160).to_dict(),
        steps=1,
        lr=1e-12,
        val_every=1,
        init_from=str(trained.model_path),
    )

    tuned = train_sam(at_160, tmp_path / "tuned.pt", config)
    scratch = train_sam(
        at_160, tmp_path / "scratch.pt", config.model_copy(update={"init_from": None})
    )

    source, weights = _weights(trained), _weights(tuned)
    decoder = "mask_decoder.output_upscaling.0.weight"
    assert torch.equal(weights[decoder], source[decoder])
    assert not torch.equal(_weights(scratch)[decoder], source[decoder])
    assert weights["image_encoder.pos_embed"].shape[1] == 10
    # starting from a trained model, the first validation is already better than from scratch
    assert tuned.history.validation[0]["loss"] < scratch.history.validation[0]["loss"]
    summary = json.loads(tuned.summary_path.read_text())
    assert summary["initialised_from"]["sha256"] == sha256_file(trained.model_path)
    assert summary["config"]["init_from"] == str(trained.model_path)
    assert "trained starting from fields-test (project-trained" in tuned.card_path.read_text()
    assert json.loads(scratch.summary_path.read_text())["initialised_from"] is None
    assert "trained from scratch" in scratch.card_path.read_text()


@pytest.mark.shared_data
def test_fine_tuning_keeps_the_source_architecture_unless_one_is_named(
    trained: TrainingResult,
) -> None:
    register_model(
        trained.model_path.parent / "manifest.json", trained.model_path, trained.architecture
    )
    source = str(trained.model_path)

    plain = with_source_architecture(TrainConfig(init_from=source))
    finer = with_source_architecture(TrainConfig(init_from=source, input_size=160))
    named = with_source_architecture(TrainConfig(init_from=source, architecture="tiny"))

    assert plain.sam_architecture() == trained.architecture == TINY_128
    assert finer.sam_architecture() == dataclasses.replace(TINY_128, image_size=160)
    assert named.sam_architecture() == TINY
    assert with_source_architecture(TrainConfig()).architecture == "fields-512"


@pytest.mark.shared_data
def test_cli_fine_tunes_and_registers_the_source_settings_until_tuned(
    trained: TrainingResult, naip_via: Path, tmp_path: Path
) -> None:
    settings = {"points_per_side": 4, "pred_iou_thresh": 0.3}
    register_model(
        trained.model_path.parent / "manifest.json",
        trained.model_path,
        trained.architecture,
        settings=settings,
    )
    output = tmp_path / "tuned.pt"
    arguments = ["model", "train", str(naip_via), "-o", str(output), "--device", "cpu"]
    arguments += ["--checkpoint-dir", str(tmp_path / "checkpoints")]

    result = runner.invoke(
        app,
        [*arguments, "--init-from", str(trained.model_path), "--steps", "1", "--no-tune"],
    )

    assert result.exit_code == 0, result.output
    entry = Manifest.load(tmp_path / "manifest.json").entries["tuned"]
    assert entry.architecture == TINY_128 and entry.settings == settings


@pytest.mark.shared_data
def test_evaluation_scores_the_three_pipelines(trained: TrainingResult, naip_via: Path) -> None:
    weights_dir = trained.model_path.parent
    register_model(weights_dir / "manifest.json", trained.model_path, trained.architecture)
    manifest = Manifest.load(weights_dir / "manifest.json")
    sam = load_sam("fields-test", weights_dir=weights_dir, manifest=manifest, device="cpu")
    scenes = load_scenes(naip_via, list(trained.validation_names))
    config = EngineConfig(working_size=128)
    grid = EvaluationGrid(
        points_per_side=(4,), pred_iou_thresh=(0.0,), stability_score_thresh=(0.0, 0.5)
    )

    updates: list[ProgressUpdate] = []
    evaluation = evaluate_model(
        sam, scenes, grid=grid, config=config, full_method_top=1, progress=updates.append
    )

    assert evaluation.images == trained.validation_names
    ticks = (2 + 1) * len(scenes)  # two settings' single passes, one finalist's full method
    assert updates == [ProgressUpdate("evaluating", n, ticks) for n in range(ticks + 1)]
    assert [set(result.pipelines) for result in evaluation.results].count(set(PIPELINES)) == 1
    assert set(evaluation.best.pipelines) == {"amg", "amg_post", "full"}
    for result in evaluation.results:
        for scores in result.pipelines.values():
            assert 0.0 <= scores.f1 <= 1.0 and 0.0 <= scores.pixel_iou <= 1.0
            assert scores.true_per_image > 10
    assert evaluation.best_settings()["points_per_side"] == 4
    assert json.loads(json.dumps(evaluation.to_dict()))["best"]["amg"] == evaluation.best.amg


@pytest.mark.shared_data
def test_amg_post_pipeline_equals_one_round_without_refinement(
    trained: TrainingResult, naip_via: Path
) -> None:
    weights_dir = trained.model_path.parent
    register_model(weights_dir / "manifest.json", trained.model_path, trained.architecture)
    manifest = Manifest.load(weights_dir / "manifest.json")
    sam = load_sam("fields-test", weights_dir=weights_dir, manifest=manifest, device="cpu")
    [scene] = load_scenes(naip_via, list(trained.validation_names))
    amg = AmgSettings(points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    config = EngineConfig(amg=amg, working_size=128)
    one_round_no_refinement = EngineConfig(
        amg=amg, working_size=128, rounds={"max_rounds": 1}, refine={"enabled": False}
    )
    image, _ = resize_to_working_size(scene.rgb, 128)
    truth = resize_labels(scene.instances, image.shape[:2])
    expected = segment_image(image, SamMaskSource(sam, amg), one_round_no_refinement).labels

    evaluation = evaluate_model(
        sam,
        [scene],
        grid=EvaluationGrid(
            points_per_side=(4,), pred_iou_thresh=(0.0,), stability_score_thresh=(0.0,)
        ),
        config=config,
    )

    expected_scores = score_partition(truth, expected)
    assert evaluation.best.pipelines["amg_post"].f1 == pytest.approx(expected_scores.f1)
    assert evaluation.best.pipelines["amg_post"].pixel_iou == pytest.approx(
        expected_scores.pixel_iou
    )


# --- the command ---------------------------------------------------------------------------


@pytest.mark.shared_data
def test_cli_trains_registers_and_evaluates(naip_via: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(
        json.dumps(
            tiny_config(steps=3, val_every=3, checkpoint_every=3).model_dump(
                mode="json", exclude={"device"}
            )
        )
    )
    weights_dir = tmp_path / "weights"
    model = weights_dir / "lisegagr-test.pt"

    trained = runner.invoke(
        app,
        [
            "model", "train", str(naip_via), "-o", str(model), "--config", str(config),
            "--device", "cpu", "--no-tune", "--val-fraction", "0.25",
            "--checkpoint-dir", str(tmp_path / "checkpoints"),
        ],
    )  # fmt: skip

    assert trained.exit_code == 0, trained.output
    assert "registered lisegagr-test" in trained.output
    evaluated = runner.invoke(
        app,
        [
            "model", "evaluate", "lisegagr-test", str(naip_via), "--weights-dir", str(weights_dir),
            "--device", "cpu", "--working-size", "128", "--points-per-side", "4",
            "--iou-thresh", "0.0", "--stability-thresh", "0.0",
            "--results-dir", str(tmp_path / "results"),
        ],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output
    table = json.loads((tmp_path / "results" / "model_eval_lisegagr-test.json").read_text())
    assert len(table["images"]) == 1 and table["machine"]["cpu"]
    entry = json.loads((weights_dir / "manifest.json").read_text())["checkpoints"]["lisegagr-test"]
    assert entry["settings"] == {
        "points_per_side": 4,
        "pred_iou_thresh": 0.0,
        "stability_score_thresh": 0.0,
    }
    card = (weights_dir / "lisegagr-test.md").read_text()
    assert "full LiSegAgr method" in card
    # The card shows every setting tried (with merged / split fields) and the machine.
    assert "| 4 | 0 | 0 |" in card and "merged / split" in card
    assert table["machine"]["cpu"] in card


def test_cli_says_in_one_sentence_when_there_is_nothing_to_train_on(tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["model", "train", str(tmp_path), "-o", str(tmp_path / "m.pt"), "--device", "cpu"]
    )

    assert result.exit_code == 2
    assert "no annotated images found" in result.output
    assert "Traceback" not in result.output


@pytest.mark.shared_data
def test_cli_says_in_one_sentence_when_the_model_to_start_from_is_unknown(
    naip_via: Path, tmp_path: Path
) -> None:
    arguments = ["model", "train", str(naip_via), "-o", str(tmp_path / "m.pt"), "--device", "cpu"]

    result = runner.invoke(app, [*arguments, "--arch", "tiny", "--init-from", "no-such-model"])

    assert result.exit_code == 2
    assert "'no-such-model' is neither a model name" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "m.pt").exists()


def test_pooled_scores_count_merged_and_split_fields_over_the_images() -> None:
    from lisegagr_core.metrics import SegmentationScores
    from lisegagr_core.training.evaluation import PipelineScores

    one = SegmentationScores(0.8, 0.5, 0.5, 0.5, 0.7, 10, 10, 5, 2, 1)
    two = SegmentationScores(0.6, 1.0, 0.2, 0.33, 0.9, 10, 2, 2, 3, 0)
    pooled = PipelineScores.pooled([one, two], seconds=4.0)
    assert (pooled.merged_fields, pooled.split_fields) == (5, 1)
    assert pooled.precision == 7 / 12 and pooled.recall == 7 / 20
    assert pooled.seconds_per_image == 2.0
