"""The field / non-field classifier: colour features, crops, file format, dataset, training."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio
import torch
import torchvision
from affine import Affine
from typer.testing import CliRunner

from lisegagr.cli import app
from lisegagr_core.classify import (
    ClassifierConfig,
    CropFolder,
    FieldClassifier,
    SuperpixelNegatives,
    binary_metrics,
    build_classifier,
    build_crop_dataset,
    classify_instances,
    colour_richness,
    evaluate_classifier,
    instance_crops,
    load_classifier,
    rgb_to_hue,
    save_classifier,
    square_crops,
    train_classifier,
)
from lisegagr_core.classify.model import HueAttention
from lisegagr_core.errors import InputError
from lisegagr_core.progress import ProgressUpdate

runner = CliRunner()

#: A ResNet-18 on 32 px crops: the real architecture, fast enough for a 2-core CI runner.
SMALL = ClassifierConfig(backbone="resnet18", input_size=32)


def test_hue_of_primary_secondary_and_grey_colours() -> None:
    colours = [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1), (0.5, 0.5, 0.5), (0, 0, 0)]
    rgb = torch.tensor(colours, dtype=torch.float32).T.reshape(1, 3, 1, len(colours))
    hue = rgb_to_hue(rgb)
    assert hue.shape == (1, 1, 1, len(colours))
    expected = [0.0, 1 / 3, 2 / 3, 1 / 6, 1 / 2, 0.0, 0.0]
    assert hue.flatten().tolist() == pytest.approx(expected, abs=1e-6)


def test_hue_attention_gates_hue_and_averages_it_per_image() -> None:
    attention = HueAttention()
    with torch.no_grad():
        for conv in (attention.gate[0], attention.gate[2]):
            assert isinstance(conv, torch.nn.Conv2d)
            conv.weight.fill_(1.0)
            conv.bias.fill_(0.0)
    hue = torch.zeros(2, 1, 2, 2)
    hue[0] = 0.5
    hue[1, 0, 0, 0] = 0.25  # one of four pixels
    gated = attention(hue)
    assert gated.shape == (2,)
    sigmoid = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert gated[0].item() == pytest.approx(0.5 * sigmoid(0.5))
    assert gated[1].item() == pytest.approx(0.25 * sigmoid(0.25) / 4)


def test_colour_richness_counts_non_empty_histogram_bins() -> None:
    rgb8 = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    rgb8[0, 1] = torch.tensor([[0, 1], [2, 3]])  # R: 1 bin, G: 4 bins, B: 1 bin
    rgb8[1, 0] = torch.tensor([[255, 255], [7, 7]])  # R: 2 bins, G: 1, B: 1
    rgb8[1, 2] = torch.tensor([[9, 10], [11, 9]])  # B: 3 bins
    richness = colour_richness(rgb8)
    assert richness.tolist() == pytest.approx([(1 + 4 + 1) / 3 / 256, (2 + 1 + 3) / 3 / 256])


def test_colour_features_are_scaled_and_read_from_the_normalised_input() -> None:
    model = FieldClassifier(SMALL)
    rgb8 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean = torch.tensor(SMALL.mean).view(1, 3, 1, 1)
    std = torch.tensor(SMALL.std).view(1, 3, 1, 1)
    features = model.colour_features((rgb8.float() / 255 - mean) / std)
    assert features.shape == (3, 2)
    hue = model.hue_attention(rgb_to_hue(rgb8.float() / 255))
    assert features[:, 0].tolist() == pytest.approx((3.0 * hue).tolist(), abs=1e-5)
    assert features[:, 1].tolist() == pytest.approx((2.0 * colour_richness(rgb8)).tolist())


def _reference_crop(rgb: np.ndarray, labels: np.ndarray, instance_id: int, size: int) -> np.ndarray:
    """One instance's crop the slow, obvious way: pad, cut the square, mask, resample."""
    rows, cols = np.nonzero(labels == instance_id)
    r0, r1, c0, c1 = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    side = max(r1 - r0, c1 - c0)
    top, left = r0 - (side - (r1 - r0)) // 2, c0 - (side - (c1 - c0)) // 2
    pad = side
    masked = np.where((labels == instance_id)[..., None], rgb, 0)
    padded = np.pad(masked, ((pad, pad), (pad, pad), (0, 0)))
    square = padded[top + pad : top + pad + side, left + pad : left + pad + side]
    if side % size == 0:  # shrink by a whole factor: box average
        return cv2.resize(square, (size, size), interpolation=cv2.INTER_AREA)
    if size % side == 0:  # enlarge by a whole factor: repeat pixels
        factor = size // side
        return np.repeat(np.repeat(square, factor, axis=0), factor, axis=1)
    k = math.ceil(side / size)
    out = np.zeros((size, size, 3))
    for a in range(k):
        for b in range(k):
            ys = np.floor(top + (np.arange(size) + (a + 0.5) / k) * side / size).astype(int)
            xs = np.floor(left + (np.arange(size) + (b + 0.5) / k) * side / size).astype(int)
            out += padded[ys[:, None] + pad, xs[None, :] + pad]
    return np.round(out / (k * k)).astype(np.uint8)


def test_batched_crops_equal_per_instance_reference() -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (460, 470, 3), dtype=np.uint8)
    labels = np.zeros((460, 470), np.uint32)
    labels[4:452, 10:310] = 3  # 448 tall: shrunk by exactly 2
    labels[20:60, 330:360] = 5  # 40 × 30 at the top: enlarged, not by a whole factor
    labels[400:456, 420:470] = 9  # 56 × 50 touching the right edge: square leaves the image
    labels[300:310, 320:330] = 11  # 10 × 10
    labels[100:150, 400:440] = np.where(rng.random((50, 40)) < 0.7, 13, 0)  # holes, ragged
    ids = [3, 5, 9, 11, 13]
    crops = square_crops(rgb, labels, ids, size=224)
    assert crops.shape == (5, 3, 224, 224) and crops.dtype == torch.uint8
    for crop, instance_id in zip(crops, ids, strict=True):
        reference = _reference_crop(rgb, labels, instance_id, 224)
        difference = np.abs(crop.permute(1, 2, 0).numpy().astype(int) - reference.astype(int))
        assert difference.max() <= 1, instance_id  # rounding of an average may differ by one


def test_instance_crops_are_imagenet_normalised() -> None:
    rgb = np.full((64, 64, 3), 255, np.uint8)
    labels = np.ones((64, 64), np.uint32)
    crops = instance_crops(rgb, labels, [1], size=32)
    assert crops.shape == (1, 3, 32, 32) and crops.dtype == torch.float32
    expected = [(1 - m) / s for m, s in zip(SMALL.mean, SMALL.std, strict=True)]
    assert crops[0, :, 5, 5].tolist() == pytest.approx(expected, abs=1e-5)


def test_classify_instances_scores_every_instance_in_any_batch_size() -> None:
    torch.manual_seed(0)
    model = FieldClassifier(SMALL)
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    labels = np.zeros((96, 96), np.uint32)
    labels[:40, :40], labels[50:, :30], labels[10:90, 60:90] = 4, 7, 1000
    one_batch = classify_instances(rgb, labels, model, batch_size=64)
    small_batches = classify_instances(rgb, labels, model, batch_size=2)
    assert sorted(one_batch) == [4, 7, 1000]
    for instance_id, score in one_batch.items():
        assert 0.0 <= score <= 1.0
        assert small_batches[instance_id] == pytest.approx(score, abs=1e-5)


def test_classifier_file_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FieldClassifier(SMALL).eval()
    digest = save_classifier(model, tmp_path / "fields.pt", {"epochs": 1})
    loaded, header = load_classifier(tmp_path / "fields.pt")
    assert header["sha256"] == digest and header["metadata"] == {"epochs": 1}
    assert loaded.config == SMALL
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images), atol=1e-6)
    payload = torch.load(tmp_path / "fields.pt", weights_only=True)
    assert json.loads(payload["config"])["backbone"] == "resnet18"


def test_files_that_are_not_this_classifier_are_refused(tmp_path: Path) -> None:
    plain = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), plain)
    with pytest.raises(InputError, match=r"resnet18\.pth is not a lisegagr field classifier"):
        load_classifier(plain)

    model_file = tmp_path / "fields.pt"
    save_classifier(FieldClassifier(SMALL), model_file)
    payload = torch.load(model_file, weights_only=True)
    payload["config"] = ClassifierConfig(backbone="resnet50", input_size=32).model_dump_json()
    torch.save(payload, tmp_path / "relabelled.pt")
    with pytest.raises(InputError, match=r"relabelled\.pt holds weights of another architecture"):
        load_classifier(tmp_path / "relabelled.pt")

    payload = torch.load(model_file, weights_only=True)
    payload["state_dict"]["head.bias"] += 1.0
    torch.save(payload, tmp_path / "tampered.pt")
    with pytest.raises(InputError, match=r"tampered\.pt is corrupt"):
        load_classifier(tmp_path / "tampered.pt")

    (tmp_path / "notes.pt").write_text("not weights")
    with pytest.raises(InputError, match=r"notes\.pt is not a PyTorch weights file"):
        load_classifier(tmp_path / "notes.pt")


def test_imagenet_weights_of_another_backbone_are_refused(tmp_path: Path) -> None:
    weights = tmp_path / "resnet18-imagenet.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    model = build_classifier(SMALL, weights)  # same backbone: loads, fc ignored
    reference = torch.load(weights, weights_only=True)
    assert torch.equal(model.backbone.conv1.weight, reference["conv1.weight"])
    with pytest.raises(InputError, match=r"resnet18-imagenet\.pth holds weights of another"):
        build_classifier(ClassifierConfig(backbone="resnet50"), weights)


def test_binary_metrics_against_hand_computed_values() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.1])
    truth = np.array([True, True, False, False])
    metrics = binary_metrics(scores, truth)
    assert metrics["accuracy"] == 0.75
    assert metrics["precision"] == pytest.approx(2 / 3) and metrics["recall"] == 1.0
    assert metrics["f1"] == pytest.approx(0.8)
    assert metrics["roc_auc"] == pytest.approx(3.5 / 4)  # the tie counts a half
    assert metrics["confusion"] == {
        "field": {"field": 2, "nonfield": 0},
        "nonfield": {"field": 1, "nonfield": 1},
    }
    assert binary_metrics(scores[:2], truth[:2])["roc_auc"] is None


# --- the crop dataset ---------------------------------------------------------------------


def _scene(rng: np.random.Generator) -> np.ndarray:
    """A 128 × 128 image: a green field (left), a brown one (top right), grey elsewhere."""
    rgb = np.full((128, 128, 3), 110, np.uint8)
    rgb[8:120, 8:60] = (60, 150, 60)
    rgb[8:60, 70:120] = (150, 110, 70)
    return np.clip(rgb + rng.normal(0, 6, rgb.shape), 0, 255).astype(np.uint8)


FIELD_POLYGONS = [
    ("1", [[8, 8], [60, 8], [60, 120], [8, 120]]),
    ("1", [[70, 8], [120, 8], [120, 60], [70, 60]]),
    ("0", [[70, 70], [120, 70], [120, 120], [70, 120]]),
]


def _labelme_images(
    folder: Path, count: int, shapes: list[tuple[str, list[list[float]]]] = FIELD_POLYGONS
) -> list[Path]:
    rng = np.random.default_rng(0)
    files = []
    for index in range(count):
        image = folder / f"scene{index}.png"
        cv2.imwrite(str(image), cv2.cvtColor(_scene(rng), cv2.COLOR_RGB2BGR))
        document = {
            "imagePath": image.name,
            "shapes": [
                {"label": label, "points": points, "shape_type": "polygon"}
                for label, points in shapes
            ],
        }
        files.append(folder / f"scene{index}.json")
        files[-1].write_text(json.dumps(document))
    return files


def test_dataset_is_split_by_image_with_one_crop_per_polygon(tmp_path: Path) -> None:
    files = _labelme_images(tmp_path, 5)
    report = build_crop_dataset(files, tmp_path / "crops", test_fraction=0.4, seed=3)
    train, test = set(report.images["train"]), set(report.images["test"])
    assert len(test) == 2 and len(train) == 3 and not train & test
    for split, names in report.images.items():
        stems = {Path(name).stem for name in names}
        for class_name, per_image in (("field", 2), ("nonfield", 1)):
            crops = sorted((tmp_path / "crops" / split / class_name).glob("*.png"))
            assert len(crops) == per_image * len(names) == report.counts[split][class_name]
            assert {crop.name.split("_")[0] for crop in crops} == stems
    first = sorted((tmp_path / "crops" / "train" / "field").glob("*.png"))[0]
    assert cv2.imread(str(first)).shape == (224, 224, 3)
    manifest = json.loads((tmp_path / "crops" / "dataset.json").read_text())
    assert manifest["negatives"] is None and manifest["images"] == report.images
    with pytest.raises(InputError, match="already holds a crop dataset"):
        build_crop_dataset(files, tmp_path / "crops")


def test_superpixel_negatives_stay_off_labelled_fields(tmp_path: Path) -> None:
    files = _labelme_images(tmp_path, 2, FIELD_POLYGONS[:2])
    negatives = SuperpixelNegatives(region_px=600)
    report = build_crop_dataset(files, tmp_path / "crops", negatives, test_fraction=0.5)
    assert report.negatives is not None and report.negatives.startswith("connected pieces")
    assert report.counts["train"]["nonfield"] > 0 and report.counts["test"]["nonfield"] > 0
    for crop in (tmp_path / "crops").glob("*/nonfield/*.png"):
        pixels = cv2.cvtColor(cv2.imread(str(crop)), cv2.COLOR_BGR2RGB).reshape(-1, 3)
        shown = pixels[pixels.any(axis=1)]
        greenish = (shown[:, 1] > 130) & (shown[:, 0] < 90)
        assert greenish.mean() < 0.05  # the green field is labelled: never a negative


def test_unknown_label_is_refused_with_file_and_label(tmp_path: Path) -> None:
    files = _labelme_images(tmp_path, 2, [*FIELD_POLYGONS, ("forest", [[0, 0], [5, 0], [5, 5]])])
    with pytest.raises(InputError, match=r"scene0\.json: polygon 3 .* label 'forest'"):
        build_crop_dataset(files, tmp_path / "crops")


def test_polygon_outside_the_image_is_refused(tmp_path: Path) -> None:
    outside = ("1", [[300, 300], [340, 300], [340, 340]])
    files = _labelme_images(tmp_path, 2, [*FIELD_POLYGONS, outside])
    with pytest.raises(InputError, match=r"polygon 3 \(label '1'\) lies outside .*128×128"):
        build_crop_dataset(files, tmp_path / "crops")


def test_geojson_polygons_over_a_georeferenced_raster(tmp_path: Path) -> None:
    origin = Affine(2.0, 0.0, 500_000.0, 0.0, -2.0, 4_000_000.0)
    rgb = _scene(np.random.default_rng(0))
    with rasterio.open(
        tmp_path / "farm.tif",
        "w",
        driver="GTiff",
        width=128,
        height=128,
        count=3,
        dtype="uint8",
        crs="EPSG:32615",
        transform=origin,
    ) as dst:
        dst.write(np.moveaxis(rgb, -1, 0))
    features = [
        {
            "type": "Feature",
            "properties": {"label": label},
            "geometry": {
                "type": "Polygon",
                "coordinates": [[origin @ tuple(p) for p in [*points, points[0]]]],
            },
        }
        for label, points in FIELD_POLYGONS
    ]
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "EPSG:32615"}},
        "features": features,
    }
    (tmp_path / "farm.geojson").write_text(json.dumps(collection))
    report = build_crop_dataset([tmp_path / "farm.geojson"], tmp_path / "crops")
    assert report.counts["train"] == {"field": 2, "nonfield": 1}  # one image: all in train
    crop = cv2.imread(str(next((tmp_path / "crops/train/nonfield").glob("*.png"))))
    assert crop[112, 112].mean() == pytest.approx(110, abs=25)  # the grey square, not black


# --- training -----------------------------------------------------------------------------


def _colour_crops(root: Path, per_class: int = 12) -> Path:
    """A crop dataset a classifier can learn in a few steps: green fields, grey-blue rest."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for class_name, colour in (("field", (70, 160, 60)), ("nonfield", (90, 100, 140))):
            folder = root / split / class_name
            folder.mkdir(parents=True)
            for index in range(per_class if split == "train" else 4):
                crop = np.clip(rng.normal(colour, 20, (32, 32, 3)), 0, 255).astype(np.uint8)
                cv2.imwrite(str(folder / f"{index}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


@pytest.mark.slow
def test_short_training_lowers_the_loss_and_writes_a_loadable_classifier(tmp_path: Path) -> None:
    data = _colour_crops(tmp_path / "crops")
    updates: list[ProgressUpdate] = []
    report = train_classifier(
        data,
        tmp_path / "fields.pt",
        SMALL,
        epochs=3,
        batch_size=8,
        lr=0.01,
        progress=updates.append,
    )
    losses = [epoch.train_loss for epoch in report.history]
    assert losses[-1] < losses[0]
    assert [u.task for u in updates if u.done == 0] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert updates[-1].done == updates[-1].total == 3  # 24 crops in batches of 8
    assert updates[-1].status.startswith(f"loss {losses[-1]:.3f}, test accuracy")
    assert report.train_counts == {"field": 12, "nonfield": 12}
    scores = evaluate_classifier(tmp_path / "fields.pt", data)
    assert scores["sha256"] == report.sha256 and scores["crops"] == 8
    assert set(scores) >= {"accuracy", "precision", "recall", "f1", "roc_auc", "confusion"}


def test_an_empty_class_folder_is_refused(tmp_path: Path) -> None:
    data = _colour_crops(tmp_path / "crops")
    for crop in (data / "train" / "nonfield").glob("*.png"):
        crop.unlink()
    with pytest.raises(InputError, match=r"train/nonfield holds no crops"):
        CropFolder(data, "train")
    result = runner.invoke(app, ["classifier", "train", str(data), "-o", str(tmp_path / "f.pt")])
    assert result.exit_code == 2 and "train/nonfield holds no crops" in result.output


@pytest.mark.slow
def test_classifier_commands_train_and_evaluate(tmp_path: Path) -> None:
    data = _colour_crops(tmp_path / "crops")
    model_file = tmp_path / "fields.pt"
    result = runner.invoke(
        app,
        [
            "classifier",
            "train",
            str(data),
            "-o",
            str(model_file),
            "--backbone",
            "resnet18",
            "--input-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--lr",
            "0.01",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "fields.pt.json").read_text())
    assert len(summary["history"]) == 1 and summary["settings"]["lr"] == 0.01
    result = runner.invoke(
        app, ["classifier", "eval", str(model_file), str(data), "--json", str(tmp_path / "e.json")]
    )
    assert result.exit_code == 0, result.output
    assert "roc_auc" in result.output and "majority baseline" in result.output
    assert json.loads((tmp_path / "e.json").read_text())["crops"] == 8
    result = runner.invoke(app, ["classifier", "eval", str(data / "train"), str(data)])
    assert result.exit_code == 2 and "no such file" in result.output


def test_negatives_from_the_engine_with_a_sam_model(tmp_path: Path) -> None:
    """`--negatives sam`: the engine's instances off the labelled polygons (tiny random SAM)."""
    files = _labelme_images(tmp_path, 2, FIELD_POLYGONS[:2])
    config = tmp_path / "permissive.yaml"
    config.write_text(
        "amg: {pred_iou_thresh: 0.0, stability_score_thresh: 0.0}\n"
        "working_size: 128\nrefine: {enabled: false}\nrounds: {max_rounds: 1}\n"
    )
    out = tmp_path / "crops"
    result = runner.invoke(
        app,
        [
            "classifier",
            "build-dataset",
            *map(str, files),
            "-o",
            str(out),
            "--negatives",
            "sam",
            "--model",
            "tiny",
            "--device",
            "cpu",
            "--points-per-side",
            "4",
            "-c",
            str(config),
        ],
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["negatives"].startswith("instances segmented by the LiSegAgr engine")
    assert sum(manifest["counts"][split]["field"] for split in ("train", "test")) == 4


def test_combined_negatives_top_up_the_first_sources_instances_over_what_it_left() -> None:
    from lisegagr_core.classify import CombinedNegatives
    from lisegagr_core.imagery import LoadedImage

    class Fixed:
        description = "fixed"

        def __init__(self, labels: np.ndarray) -> None:
            self.labels = labels
            self.seen: list[np.ndarray] = []

        def instances(self, image: LoadedImage, labelled: np.ndarray) -> np.ndarray:
            self.seen.append(labelled.copy())
            return np.where(labelled, 0, self.labels).astype(np.uint32)

    first_labels = np.zeros((4, 6), np.uint32)
    first_labels[:2, :2] = 1
    first_labels[:2, 2:4] = 2
    then = Fixed(np.tile(np.array([1, 1, 2, 2, 3, 3], np.uint32), (4, 1)))
    labelled = np.zeros((4, 6), bool)
    labelled[3] = True  # an outlined field along the bottom row
    combined = CombinedNegatives(Fixed(first_labels), then)

    image = LoadedImage.__new__(LoadedImage)
    ids = combined.instances(image, labelled)

    assert (ids[:2, :4] == first_labels[:2, :4]).all()  # the first source's instances, kept
    assert (then.seen[0] == (labelled | (first_labels > 0))).all()  # the rest only
    assert set(np.unique(ids[2, :])) == {3, 4, 5} and set(np.unique(ids[:2, 4:])) == {5}
    assert (ids[3] == 0).all() and "then fixed of the rest" in combined.description
