"""Training the classifier on a crop dataset, and measuring it on held-out crops.

    report = train_classifier(Path("crops"), Path("weights/fields.pt"), ClassifierConfig())
    scores = evaluate_classifier(Path("weights/fields.pt"), Path("crops"))

The method's recipe: cross-entropy, SGD with a constant lr 1e-4, momentum 0.9, weight decay
0.1, batch 32, 10 epochs (every one a parameter; a cosine decay of the rate is an option).
The data is the ImageFolder tree of `build_crop_dataset` (``train|test/field|nonfield/*.png``);
the test split is scored after every epoch. "field" is the positive class of precision,
recall, F1 and ROC AUC.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from scipy.stats import rankdata
from torch.utils.data import DataLoader, Dataset

from lisegagr_core.classify.crops import normalise_crops
from lisegagr_core.classify.model import (
    CLASS_NAMES,
    FIELD_INDEX,
    ClassifierConfig,
    FieldClassifier,
    build_classifier,
    load_classifier,
    save_classifier,
)
from lisegagr_core.devices import resolve_device
from lisegagr_core.errors import InputError
from lisegagr_core.progress import ProgressCallback, ProgressUpdate, ignore_progress

log = logging.getLogger(__name__)

CROP_SUFFIXES = (".png", ".jpg", ".jpeg")

LrSchedule = Literal["constant", "cosine"]


class CropFolder(Dataset[tuple[torch.Tensor, int]]):
    """The crops of one split of an ImageFolder tree: (3, S, S) uint8 tensors and class index.

    Classes are `CLASS_NAMES` in order (0 = field). An absent or empty class folder raises
    `InputError`: a classifier needs examples of both classes.
    """

    def __init__(self, root: Path, split: str) -> None:
        self.root = root
        self.split = split
        paths: list[Path] = []
        targets: list[int] = []
        for index, class_name in enumerate(CLASS_NAMES):
            folder = root / split / class_name
            found = (
                sorted(p for p in folder.iterdir() if p.suffix.lower() in CROP_SUFFIXES)
                if folder.is_dir()
                else []
            )
            if not found:
                raise InputError(
                    f"{folder} holds no crops (*.png); the classifier needs examples of both "
                    f"classes in the {split} split."
                )
            paths.extend(found)
            targets.extend([index] * len(found))
        self.paths = paths
        self.targets = np.asarray(targets, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.paths[index]
        bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"{path} is not a readable image.")
        rgb = np.ascontiguousarray(bgr[:, :, ::-1].transpose(2, 0, 1))
        return torch.from_numpy(rgb), int(self.targets[index])

    def class_counts(self) -> dict[str, int]:
        return {name: int((self.targets == i).sum()) for i, name in enumerate(CLASS_NAMES)}


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch: mean training loss and accuracy, then loss, accuracy and F1 on the test split."""

    epoch: int
    train_loss: float
    train_accuracy: float
    test_loss: float
    test_accuracy: float
    test_f1: float
    seconds: float


@dataclass(frozen=True)
class TrainingReport:
    """A finished training run: where the classifier is, its weights' sha256, the history."""

    path: str
    sha256: str
    device: str
    history: list[EpochMetrics]
    train_counts: dict[str, int]
    test_counts: dict[str, int]
    settings: dict[str, Any]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_classifier(
    data_dir: Path,
    out_file: Path,
    config: ClassifierConfig | None = None,
    *,
    epochs: int = 10,
    batch_size: int = 32,
    lr: float = 1e-4,
    momentum: float = 0.9,
    weight_decay: float = 0.1,
    device: str | torch.device | None = None,
    imagenet_weights: Path | None = None,
    schedule: LrSchedule = "constant",
    augment: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    half: bool = False,
    progress: ProgressCallback | None = None,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
) -> TrainingReport:
    """Train a classifier on ``data_dir/train`` and write it to `out_file` after the last epoch.

    schedule: "constant" learning rate (the paper's) or "cosine" decay to 0 over all steps,
    which settles the last epoch's weights when the rate is high. augment: random flips and
    quarter turns of each training crop (colours unchanged; the paper trains without).
    num_workers: DataLoader processes decoding PNGs. half: store the weights as float16.
    progress: hears of each batch (one task per epoch, "epoch 2/10", with the loss as status).
    on_epoch is called with each epoch's metrics.
    """
    config = config or ClassifierConfig()
    target = resolve_device(device)
    torch.manual_seed(seed)
    train_set, test_set = CropFolder(data_dir, "train"), CropFolder(data_dir, "test")
    model = build_classifier(config, imagenet_weights).to(target)
    optimiser = torch.optim.SGD(
        model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay
    )
    loader = DataLoader(
        train_set,
        batch_size=batch_size,
        shuffle=True,
        num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed),
    )
    steps = epochs * len(loader)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        (lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
        if schedule == "cosine"
        else (lambda step: 1.0),
    )
    settings = {
        "data": str(data_dir),
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "schedule": schedule,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "augment": augment,
        "seed": seed,
        "imagenet_weights": str(imagenet_weights) if imagenet_weights else None,
    }
    log.info("training on %s: %s train, %s test crops", target, len(train_set), len(test_set))
    history: list[EpochMetrics] = []
    started = time.perf_counter()
    report = progress or ignore_progress
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        task, batches = f"epoch {epoch}/{epochs}", len(loader)
        report(ProgressUpdate(task, 0, batches))
        model.train()
        loss_sum, correct = 0.0, 0
        for batch, (crops, targets) in enumerate(loader, start=1):
            images = _model_input(crops.to(target), config, augment=augment)
            labels = targets.to(target)
            logits = model(images)
            loss = F.cross_entropy(logits, labels)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            loss_sum += loss.item() * len(labels)
            correct += int((logits.argmax(dim=1) == labels).sum())
            report(ProgressUpdate(task, batch, batches, f"loss {loss.item():.3f}"))
        scores, test_loss = predict_crops(model, test_set, batch_size)
        test = binary_metrics(scores, test_set.targets == FIELD_INDEX)
        metrics = EpochMetrics(
            epoch=epoch,
            train_loss=loss_sum / len(train_set),
            train_accuracy=correct / len(train_set),
            test_loss=test_loss,
            test_accuracy=float(test["accuracy"]),
            test_f1=float(test["f1"]),
            seconds=time.perf_counter() - epoch_started,
        )
        status = f"loss {metrics.train_loss:.3f}, test accuracy {metrics.test_accuracy:.3f}"
        report(ProgressUpdate(task, batches, batches, status))
        history.append(metrics)
        log.info("%s", metrics)
        if on_epoch is not None:
            on_epoch(metrics)
    seconds = time.perf_counter() - started
    digest = save_classifier(
        model,
        out_file,
        {**settings, "history": [asdict(m) for m in history], "seconds": seconds},
        half=half,
    )
    return TrainingReport(
        path=str(out_file),
        sha256=digest,
        device=str(target),
        history=history,
        train_counts=train_set.class_counts(),
        test_counts=test_set.class_counts(),
        settings=settings,
        seconds=seconds,
    )


def predict_crops(
    model: FieldClassifier, crops: CropFolder, batch_size: int = 64
) -> tuple[NDArray[np.float64], float]:
    """Field scores (N,) of every crop of a split, in its order, and the mean cross-entropy."""
    model.eval()
    scores: list[torch.Tensor] = []
    loss_sum = 0.0
    loader = DataLoader(crops, batch_size=batch_size, shuffle=False)
    with torch.inference_mode():
        for batch, targets in loader:
            logits = model(_model_input(batch.to(model.device), model.config))
            loss_sum += float(F.cross_entropy(logits, targets.to(model.device), reduction="sum"))
            scores.append(torch.softmax(logits.float(), dim=1)[:, FIELD_INDEX].cpu())
    return torch.cat(scores).double().numpy(), loss_sum / len(crops)


def binary_metrics(
    field_scores: NDArray[np.floating], is_field: NDArray[np.bool_], threshold: float = 0.5
) -> dict[str, Any]:
    """Accuracy, precision, recall, F1 (field positive), confusion matrix and ROC AUC.

    field_scores: (N,) probability of "field"; is_field: (N,) truth. A crop is called a field
    when its score is at least `threshold`. ROC AUC is the Mann–Whitney statistic from ranks
    (ties share their mean rank); None when a class is absent. The majority baseline is the
    accuracy of always answering the more frequent class of these crops.
    """
    truth = np.asarray(is_field, dtype=bool)
    called = np.asarray(field_scores) >= threshold
    tp = int((called & truth).sum())
    fp = int((called & ~truth).sum())
    fn = int((~called & truth).sum())
    tn = int((~called & ~truth).sum())
    total = len(truth)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    positives, negatives = int(truth.sum()), int((~truth).sum())
    auc = None
    if positives and negatives:
        ranks = rankdata(field_scores)
        auc = float(
            (ranks[truth].sum() - positives * (positives + 1) / 2) / (positives * negatives)
        )
    return {
        "crops": total,
        "accuracy": (tp + tn) / total if total else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "roc_auc": auc,
        "confusion": {
            "field": {"field": tp, "nonfield": fn},
            "nonfield": {"field": fp, "nonfield": tn},
        },
        "majority_baseline_accuracy": max(positives, negatives) / total if total else 0.0,
        "threshold": threshold,
    }


def evaluate_classifier(
    file: Path,
    data_dir: Path,
    *,
    split: str = "test",
    device: str | torch.device | None = None,
    batch_size: int = 64,
) -> dict[str, Any]:
    """`binary_metrics` of a classifier file on one split of a crop dataset, with provenance.

    The confusion matrix is keyed true class → predicted class → count.
    """
    model, header = load_classifier(file, resolve_device(device))
    crops = CropFolder(data_dir, split)
    scores, loss = predict_crops(model, crops, batch_size)
    return {
        "classifier": str(file),
        "sha256": header["sha256"],
        "backbone": header["config"]["backbone"],
        "data": str(data_dir),
        "split": split,
        "class_counts": crops.class_counts(),
        "loss": loss,
        **binary_metrics(scores, crops.targets == FIELD_INDEX),
    }


def _model_input(
    crops: torch.Tensor, config: ClassifierConfig, *, augment: bool = False
) -> torch.Tensor:
    """uint8 crops (N, 3, s, s) → the model's normalised float input (N, 3, S, S).

    Crops of another size than the config's are resized (antialiased bilinear); with
    `augment`, each crop is flipped and turned at random (the 8 symmetries of a square).
    """
    if crops.shape[-1] != config.input_size or crops.shape[-2] != config.input_size:
        size = (config.input_size, config.input_size)
        resized = F.interpolate(crops.float(), size=size, mode="bilinear", antialias=True)
        crops = resized.round().clamp(0, 255).to(torch.uint8)
    if augment:
        count = len(crops)
        for flip in (
            lambda x: x.flip(-1),
            lambda x: x.flip(-2),
            lambda x: x.transpose(-1, -2),
        ):
            chosen = torch.rand(count, device=crops.device) < 0.5
            crops = torch.where(chosen.view(-1, 1, 1, 1), flip(crops), crops)
    return normalise_crops(crops, config.mean, config.std)
