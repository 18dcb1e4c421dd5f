"""The default classifier: named in the manifest, pinned by sha256, used by runs that name none."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from lisegagr_core.classify import ClassifierConfig
from lisegagr_core.classify.model import FieldClassifier, load_classifier, save_classifier
from lisegagr_core.config import RegionConfig
from lisegagr_core.run.assemble import with_default_classifier
from lisegagr_core.training import register_classifier
from lisegagr_core.weights import Manifest, WeightsError, default_classifier

SMALL = ClassifierConfig(backbone="resnet18", input_size=32)


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    manifest = {"description": "test", "default": "tiny", "checkpoints": {}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def _shipped(weights: Path) -> Path:
    torch.manual_seed(0)
    path = weights / "fields.pt"
    save_classifier(FieldClassifier(SMALL).eval(), path, half=True)
    register_classifier(weights / "manifest.json", path, source="test")
    return path


def test_half_precision_file_is_half_the_size_and_scores_alike(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = FieldClassifier(SMALL).eval()
    save_classifier(model, tmp_path / "full.pt")
    save_classifier(model, tmp_path / "half.pt", half=True)
    full, half = (tmp_path / "full.pt").stat().st_size, (tmp_path / "half.pt").stat().st_size
    assert half < 0.55 * full
    loaded, _ = load_classifier(tmp_path / "half.pt")
    assert next(loaded.parameters()).dtype == torch.float32
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(images), loaded(images), atol=2e-2)


def test_manifest_names_the_default_classifier_and_runs_pick_it_up(weights: Path) -> None:
    path = _shipped(weights)
    manifest = Manifest.load(weights / "manifest.json")
    assert manifest.classifier is not None and manifest.classifier.filename == "fields.pt"
    assert default_classifier(weights) == path

    chosen = with_default_classifier(RegionConfig(), str(weights))
    assert chosen.classifier == str(path)
    own = with_default_classifier(RegionConfig(classifier="mine.pt"), str(weights))
    assert own.classifier == "mine.pt"
    off = with_default_classifier(RegionConfig(classifier="mine.pt"), str(weights), enabled=False)
    assert off.classifier is None


def test_without_a_shipped_classifier_runs_stay_unclassified(weights: Path) -> None:
    assert default_classifier(weights) is None
    assert with_default_classifier(RegionConfig(), str(weights)).classifier is None


def test_an_altered_or_missing_default_classifier_is_refused_with_the_fix(weights: Path) -> None:
    path = _shipped(weights)
    with path.open("ab") as stream:
        stream.write(b"\0")
    with pytest.raises(WeightsError, match=r"fields\.pt, the default classifier, does not match"):
        with_default_classifier(RegionConfig(), str(weights))
    os.remove(path)
    with pytest.raises(WeightsError, match=r"is missing; restore it .*--no-classifier"):
        default_classifier(weights)


def test_a_classifier_outside_the_manifest_folder_is_not_registered(
    weights: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "elsewhere.pt"
    save_classifier(FieldClassifier(SMALL), outside)
    with pytest.raises(WeightsError, match="must lie in"):
        register_classifier(weights / "manifest.json", outside)


def test_the_classifier_holds_out_the_images_sam_training_holds_out() -> None:
    from lisegagr_core.classify.dataset import split_by_image as classifier_split
    from lisegagr_core.training.data import split_by_image as sam_split

    names = [f"image-{i:02d}.png" for i in range(30)]
    train, validation = sam_split(names, 0.2, seed=0)
    assert classifier_split(names, 0.2, seed=0) == {"train": train, "test": validation}
