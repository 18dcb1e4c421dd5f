"""The field / non-field classifier of the method (ALGORITHM.md, step 3), and its file format.

A torchvision ResNet (ResNet-50 as in the paper, or ResNet-18 for CPUs) whose pooled features
are joined by two colour features before the final linear layer:

- hue attention: the H channel of HSV (in [0, 1)) goes through 1×1 conv → ReLU → 1×1 conv →
  sigmoid, is multiplied by that gate, averaged over the image and scaled by `hue_scale` (3.0);
- colour richness: for each of R, G, B the number of non-empty bins of its 256-bin histogram,
  divided by 256 (so it lies in (0, 1]), averaged over the channels and scaled by
  `richness_scale` (2.0).

Both are computed batched on the model's device from the 8-bit colours behind the normalised
input (the reference scripts compute them from the normalised tensor, image by image, in NumPy).
Crops cover the whole square, so the black pixels outside an instance count too (bin 0, hue 0),
as in the method.

The model takes crops ImageNet-normalised, (N, 3, S, S) float32, and gives (N, 2) logits in
the order of `CLASS_NAMES` (an ImageFolder's alphabetical order): index 0 is "field".

A classifier file is one ``torch.save`` of plain types, read with ``weights_only=True``:
format tag, version, config (JSON), class names, the state dict and its sha256.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import pickle
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from lisegagr_core.errors import InputError

log = logging.getLogger(__name__)

#: Class names in output order; index 0 ("field") is the field score's class.
CLASS_NAMES = ("field", "nonfield")
FIELD_INDEX = 0

#: ImageNet statistics of RGB in [0, 1], as torchvision's pretrained models expect.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

FILE_FORMAT = "lisegagr-field-classifier"
FILE_VERSION = 1

#: Histogram bins per channel for colour richness (8-bit colours).
RICHNESS_BINS = 256

Backbone = Literal["resnet50", "resnet18"]
_BACKBONES: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet50": torchvision.models.resnet50,
    "resnet18": torchvision.models.resnet18,
}


class ClassifierConfig(BaseModel):
    """The classifier's architecture and input; defaults are the paper's."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    backbone: Backbone = "resnet50"
    """torchvision ResNet: resnet50 (the paper's, 2048 features) or resnet18 (512, for CPUs)."""
    input_size: int = Field(224, ge=32, le=1024)
    """Side of the square crops the model sees (px)."""
    hue_scale: float = Field(3.0, gt=0.0)
    """Factor on the hue-attention feature."""
    richness_scale: float = Field(2.0, gt=0.0)
    """Factor on the colour-richness feature (share of non-empty histogram bins)."""
    hue_hidden_channels: int = Field(1, ge=1)
    """Channels between the two 1×1 convolutions of the hue gate (reference: max(1 // 2, 1))."""
    mean: tuple[float, float, float] = IMAGENET_MEAN
    """Per-channel mean subtracted from RGB in [0, 1]."""
    std: tuple[float, float, float] = IMAGENET_STD
    """Per-channel standard deviation that RGB in [0, 1] is divided by."""


def rgb_to_hue(rgb: torch.Tensor) -> torch.Tensor:
    """Hue of HSV for rgb: (N, 3, H, W) float in [0, 1] → (N, 1, H, W) float in [0, 1).

    The usual hexcone hue divided by 360°: red 0, green 1/3, blue 2/3; grey pixels get 0.
    """
    red, green, blue = rgb.unbind(dim=1)
    value, argmax = rgb.max(dim=1)
    chroma = value - rgb.min(dim=1).values
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    sector = torch.where(
        argmax == 0,
        torch.remainder((green - blue) / safe, 6.0),
        torch.where(argmax == 1, (blue - red) / safe + 2.0, (red - green) / safe + 4.0),
    )
    hue = torch.where(chroma > 0, sector / 6.0, torch.zeros_like(sector))
    return torch.remainder(hue, 1.0).unsqueeze(1)


def colour_richness(rgb8: torch.Tensor) -> torch.Tensor:
    """Share of non-empty bins of each channel's 256-bin histogram, averaged over channels.

    rgb8: (N, C, H, W) integer values 0..255 → (N,) float32 in (0, 1]. One `torch.bincount`
    over all images and channels at once (each (image, channel) gets its own 256 bins).
    """
    count, channels = rgb8.shape[:2]
    values = rgb8.reshape(count, channels, -1).long()
    offsets = torch.arange(count * channels, device=rgb8.device).view(count, channels, 1)
    histogram = torch.bincount(
        (values + offsets * RICHNESS_BINS).flatten(), minlength=count * channels * RICHNESS_BINS
    ).view(count, channels, RICHNESS_BINS)
    return (histogram > 0).sum(dim=2).float().mean(dim=1) / RICHNESS_BINS


class HueAttention(nn.Module):
    """Hue gated by 1×1 conv → ReLU → 1×1 conv → sigmoid, averaged: (N, 1, H, W) → (N,)."""

    def __init__(self, hidden_channels: int = 1) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.Conv2d(1, hidden_channels, kernel_size=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, 1, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, hue: torch.Tensor) -> torch.Tensor:
        return (hue * self.gate(hue)).mean(dim=(1, 2, 3))


class FieldClassifier(nn.Module):
    """ResNet features + hue attention + colour richness → (N, 2) logits, field first."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        self.backbone = _BACKBONES[config.backbone](weights=None)
        features = self.backbone.fc.in_features
        self.backbone.fc = nn.Identity()
        self.hue_attention = HueAttention(config.hue_hidden_channels)
        self.head = nn.Linear(features + 2, len(CLASS_NAMES))
        self.mean: torch.Tensor
        self.std: torch.Tensor
        self.register_buffer("mean", torch.tensor(config.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(config.std).view(1, 3, 1, 1), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def colour_features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2): scaled hue attention and colour richness of normalised (N, 3, S, S) crops."""
        rgb = (images * self.std + self.mean).clamp(0.0, 1.0)
        rgb8 = torch.round(rgb * 255.0).to(torch.uint8)
        hue = self.hue_attention(rgb_to_hue(rgb8.float() / 255.0)) * self.config.hue_scale
        richness = colour_richness(rgb8) * self.config.richness_scale
        return torch.stack([hue, richness], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.backbone(images), self.colour_features(images)], dim=1)
        logits: torch.Tensor = self.head(features)
        return logits

    def field_scores(self, images: torch.Tensor) -> torch.Tensor:
        """(N,) probability of "field" for normalised crops (N, 3, S, S)."""
        return torch.softmax(self(images), dim=1)[:, FIELD_INDEX]


def build_classifier(
    config: ClassifierConfig, imagenet_weights: str | Path | None = None
) -> FieldClassifier:
    """A new classifier; the backbone starts from an ImageNet state dict file when given.

    imagenet_weights: a torchvision ResNet state dict of the configured backbone (e.g.
    ``resnet50-11ad3fa6.pth``); its ``fc.*`` entries are ignored. A file of another
    architecture raises `InputError`.
    """
    model = FieldClassifier(config)
    if imagenet_weights is not None:
        state = _read_torch_file(imagenet_weights)
        if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()
        ):
            raise InputError(f"{imagenet_weights} is not a state dict of a torchvision ResNet.")
        backbone_state = {k: v for k, v in state.items() if not str(k).startswith("fc.")}
        _load_state(model.backbone, backbone_state, imagenet_weights, config.backbone)
        log.info("backbone initialised from %s", imagenet_weights)
    return model


def state_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every entry's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_classifier(
    model: FieldClassifier,
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
    *,
    half: bool = False,
) -> str:
    """Write the classifier file (atomically) and return the sha256 of its weights.

    metadata: JSON-ready facts about training, stored as a JSON string. half: store the
    floating-point weights as float16 (half the file; they load back into float32).
    """
    state = {name: tensor.detach().cpu() for name, tensor in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    digest = state_sha256(state)
    payload = {
        "format": FILE_FORMAT,
        "version": FILE_VERSION,
        "config": model.config.model_dump_json(),
        "classes": list(CLASS_NAMES),
        "state_dict": state,
        "sha256": digest,
        "metadata": json.dumps(dict(metadata or {})),
    }
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    torch.save(payload, partial)
    partial.replace(target)
    return digest


def load_classifier(
    path: str | Path, device: torch.device | str | None = None
) -> tuple[FieldClassifier, dict[str, Any]]:
    """The classifier of a file, in eval mode on `device`, and the file's header.

    The header holds "sha256" (of the weights), "config" and "metadata". Raises `InputError`
    (one sentence naming the file) for a file that is not a classifier, is corrupt, or holds
    weights of another architecture than the one it declares.
    """
    payload = _read_torch_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FILE_FORMAT:
        raise InputError(
            f"{path} is not a lisegagr field classifier (it has no classifier header); "
            "make one with `lisegagr classifier train`."
        )
    if payload.get("version") != FILE_VERSION:
        raise InputError(
            f"{path} is a field classifier of file version {payload.get('version')}, "
            f"this lisegagr reads version {FILE_VERSION}."
        )
    try:
        config = ClassifierConfig.model_validate_json(payload["config"])
    except (ValidationError, KeyError, TypeError):
        raise InputError(
            f"{path} declares a classifier configuration this lisegagr cannot use."
        ) from None
    if tuple(payload.get("classes", ())) != CLASS_NAMES:
        raise InputError(f"{path} classifies {payload.get('classes')}, not {list(CLASS_NAMES)}.")
    state = payload.get("state_dict")
    if not isinstance(state, dict) or state_sha256(state) != payload.get("sha256"):
        raise InputError(f"{path} is corrupt: its weights do not match the sha256 recorded in it.")
    model = FieldClassifier(config)
    _load_state(model, state, path, f"{config.backbone} field classifier")
    model.eval()
    if device is not None:
        model.to(device)
    header = {
        "sha256": payload["sha256"],
        "config": config.model_dump(mode="json"),
        "metadata": json.loads(payload.get("metadata") or "{}"),
    }
    return model, header


def _load_state(module: nn.Module, state: Mapping[str, Any], path: str | Path, what: str) -> None:
    """Load a state dict strictly; `InputError` naming the file when it does not fit."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        name
        for name in set(expected) & set(state)
        if not isinstance(state[name], torch.Tensor) or state[name].shape != expected[name].shape
    )
    if missing or unexpected or mismatched:
        example = (missing or unexpected or mismatched)[0]
        raise InputError(
            f"{path} holds weights of another architecture than a {what} "
            f"({len(missing)} missing, {len(unexpected)} unexpected and {len(mismatched)} "
            f"misshapen tensors, e.g. {example})."
        )
    module.load_state_dict(state)


def _read_torch_file(path: str | Path) -> Any:
    """`torch.load(weights_only=True)` on the CPU; `InputError` naming the file on failure."""
    if not Path(path).is_file():
        raise InputError(f"{path}: no such file.")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError):
        raise InputError(
            f"{path} is not a PyTorch weights file that can be read safely (weights_only)."
        ) from None


@functools.cache
def loaded_classifier(path: str, device: str | None = None) -> tuple[FieldClassifier, str]:
    """The classifier of a file and its weights' sha256, loaded once per process and device
    (what a run's planner hashes and its workers apply)."""
    classifier, header = load_classifier(path, device=device)
    return classifier, str(header["sha256"])
