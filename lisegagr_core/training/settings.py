"""Every setting of a training run in one validated object, with the measured recipe as defaults.

The recipe (``MODEL_TRAINING.md`` in the shared docs): a 9.9M-parameter `Sam` with a 256-wide,
depth-6 windowed ViT encoder at 512 px, 2,800 steps of 16 images with up to 24 field points and
8 background points each, AdamW at 4e-4 with a 200-step warm-up and a cosine decay to 0.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lisegagr_core.architectures import ARCHITECTURES, SamArchitecture
from lisegagr_core.errors import InputError

#: The recipe's architecture: SAM's prompt encoder and mask decoder over a small windowed ViT.
FIELDS_512 = SamArchitecture(
    encoder_embed_dim=256,
    encoder_depth=6,
    encoder_num_heads=8,
    encoder_global_attn_indexes=(2, 5),
    image_size=512,
    window_size=14,
)
#: A reduced SAM that trains on a CPU: 256 px input (a 16 × 16 embedding grid, 2 × 2 windows),
#: a 160-wide depth-4 encoder and a 128-wide mask decoder.
FIELDS_256_CPU = SamArchitecture(
    encoder_embed_dim=160,
    encoder_depth=4,
    encoder_num_heads=5,
    encoder_global_attn_indexes=(1, 3),
    image_size=256,
    window_size=8,
    prompt_embed_dim=128,
    decoder_mlp_dim=1024,
    decoder_num_heads=8,
    iou_head_hidden_dim=128,
)
#: Architectures a training run can name: the two above and the presets of `models`.
TRAINING_ARCHITECTURES: dict[str, SamArchitecture] = {
    "fields-512": FIELDS_512,
    "fields-256-cpu": FIELDS_256_CPU,
    **ARCHITECTURES,
}


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AugmentSettings(_Settings):
    """Random changes applied to every training image, on the training device."""

    crop_min: float = Field(0.5, gt=0.0, le=1.0)
    """Smallest square crop, as a share of the image side (the largest is the whole image)."""
    rotate: bool = True
    """Rotate by a random multiple of 90°."""
    flip: bool = True
    """Mirror left–right with probability 1/2."""
    saturation: tuple[float, float] = (0.7, 1.3)
    """Range of the factor that scales the distance of each pixel from its grey value."""
    contrast: tuple[float, float] = (0.8, 1.2)
    """Range of the factor that scales the distance of each pixel from the image's mean grey."""
    brightness: tuple[float, float] = (0.85, 1.15)
    """Range of the factor every pixel is multiplied by."""

    @field_validator("saturation", "contrast", "brightness")
    @classmethod
    def _ordered_positive(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"a factor range must satisfy 0 < low <= high, got {value}")
        return value


class TrainConfig(_Settings):
    """A whole training run; the defaults reproduce the recipe on a GPU."""

    architecture: str | dict[str, Any] = "fields-512"
    """A name of `TRAINING_ARCHITECTURES`, or the fields of a `SamArchitecture`."""
    input_size: int | None = Field(None, ge=64)
    """Side (px) images are resized to and the model takes; None: the architecture's."""
    steps: int = Field(2800, ge=1)
    warmup_steps: int = Field(200, ge=0)
    """Steps over which the learning rate rises linearly from 0; then a cosine decay to 0."""
    batch_size: int = Field(16, ge=1)
    """Images per step."""
    field_prompts: int = Field(24, ge=1)
    """Fields per image prompted with one interior point each (fewer when fewer are visible)."""
    background_prompts: int = Field(8, ge=0)
    """Points per image on unlabelled ground, which teach the IoU head a score of 0."""
    interior_size: int = Field(7, ge=1)
    """A prompt point's square neighbourhood (px, odd) must hold a single label."""
    lr: float = Field(4e-4, gt=0.0)
    weight_decay: float = Field(0.05, ge=0.0)
    grad_clip: float = Field(1.0, gt=0.0)
    """Largest global gradient norm."""
    focal_weight: float = Field(20.0, ge=0.0)
    """Weight of the sigmoid focal loss against the dice loss of each mask."""
    bf16: bool = True
    """bfloat16 autocast, on CUDA only."""
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    """Share of the images held out of training for validation (at least one when > 0)."""
    val_every: int = Field(200, ge=1)
    """Validate every this many steps (and after the last one)."""
    checkpoint_every: int = Field(500, ge=1)
    """Save model and optimiser state every this many steps (and after the last one)."""
    keep_checkpoints: int = Field(2, ge=1)
    """How many of the newest checkpoints to keep."""
    log_every: int = Field(10, ge=1)
    """Record the mean training losses of every this many steps in the history."""
    seed: int = Field(0, ge=0)
    device: str | None = None
    """cpu, cuda or cuda:N; None: CUDA when available, else the CPU."""
    augment: AugmentSettings = AugmentSettings()
    field_head_width: int | None = Field(None, ge=0)
    """Give the model a dense field head this wide at full resolution (0: none; None: as the
    architecture, or the model it starts from, has it)."""
    prompt_weight: float = Field(1.0, ge=0.0)
    """Weight of the prompted-mask loss (SAM's decoder) in the total."""
    extent_weight: float = Field(1.0, ge=0.0)
    """Weight of the field head's extent loss (BCE + dice)."""
    boundary_weight: float = Field(1.0, ge=0.0)
    """Weight of the field head's boundary loss (weighted BCE + dice)."""
    depth_weight: float = Field(1.0, ge=0.0)
    """Weight of the field head's depth loss (BCE against the normalised distance to the
    outline)."""
    boundary_pixel_weight: float = Field(4.0, ge=1.0)
    """How much more a boundary pixel counts than another in the boundary BCE."""
    head_lr: float | None = Field(None, gt=0.0)
    """Peak learning rate of the field head (same schedule); None: `lr`. A new head on a trained
    SAM learns faster than the SAM should move."""
    freeze_encoder: bool = False
    """Train only the field head (and the decoder, unless `prompt_weight` is 0) on a fixed image
    encoder: how a head is added to a large pretrained SAM such as Meta's vit_h."""
    init_from: str | None = None
    """Start from this trained SAM (a manifest name or a state-dict path) instead of random
    weights: fine-tuning. It must have the architecture's widths and depths; its input size may
    differ (positional tables are resized)."""

    @field_validator("architecture")
    @classmethod
    def _known_architecture(cls, value: str | dict[str, Any]) -> str | dict[str, Any]:
        if isinstance(value, str) and value not in TRAINING_ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {value!r}; choose one of {sorted(TRAINING_ARCHITECTURES)} "
                "or give the fields of a SamArchitecture"
            )
        if isinstance(value, dict):
            SamArchitecture.from_dict(value)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.interior_size % 2 == 0:
            raise ValueError("interior_size must be odd")
        self.sam_architecture()  # the input size must fit the patch size
        return self

    def sam_architecture(self) -> SamArchitecture:
        """The architecture to build, with `input_size` as its image size when one is set."""
        if isinstance(self.architecture, str):
            arch = TRAINING_ARCHITECTURES[self.architecture]
        else:
            arch = SamArchitecture.from_dict(self.architecture)
        if self.field_head_width is not None:
            arch = dataclasses.replace(arch, field_head_width=self.field_head_width)
        if self.input_size is None or self.input_size == arch.image_size:
            return arch
        try:
            return dataclasses.replace(arch, image_size=self.input_size)
        except ValueError as err:
            raise ValueError(f"input_size {self.input_size} does not fit: {err}") from err

    def lr_at(self, step: int) -> float:
        """Learning rate of 0-based `step`: linear warm-up, then cosine from `lr` to 0."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        decay_steps = max(1, self.steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / decay_steps)
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def load_train_config(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """TrainConfig from a YAML/JSON file (or the defaults), then `overrides` (None values skipped).

    A file that cannot be read or settings that do not validate raise InputError naming the file.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise InputError(f"{path}: no such training configuration file.") from None
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
            raise InputError(f"{path}: not a readable YAML or JSON file ({exc}).") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise InputError(f"{path}: a training configuration must be a mapping of settings.")
        data = loaded or {}
    data.update({key: value for key, value in (overrides or {}).items() if value is not None})
    try:
        return TrainConfig.model_validate(data)
    except ValueError as exc:
        where = str(path) if path is not None else "the command line"
        problems = str(exc).splitlines()
        raise InputError(
            f"{where}: invalid training settings ({'; '.join(problems[:3])})."
        ) from None
