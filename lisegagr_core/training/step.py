"""One training step and one validation pass of a SAM, each drawing its randomness from
generators seeded by (seed, stream, step): a run is repeatable on the CPU, and a resumed run
draws what the uninterrupted run would have.

A step augments a batch of images on the device, draws point prompts inside fields and on
ground, encodes the images once and decodes every prompt of the batch in one pass, and takes
an AdamW step on the recipe's loss (plus the field head's, when the model has one).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from lisegagr_core.field_head import (
    HeadLoss,
    field_head_of,
    head_loss,
    head_scores,
    head_targets,
)
from lisegagr_core.training.augment import augment_batch
from lisegagr_core.training.data import TrainingImage
from lisegagr_core.training.objective import LossTerms, decode_prompts, prompt_loss
from lisegagr_core.training.prompts import PromptBatch, prompt_targets, sample_prompts
from lisegagr_core.training.settings import TrainConfig

# Independent random streams of a run, each seeded by (seed, stream, step).
_TRAIN_STREAM, _VALIDATION_STREAM, _BATCH_STREAM = 0, 1, 2


@dataclass(frozen=True)
class StepTerms:
    """The losses of one step, detached: SAM's prompted masks and the field head's maps."""

    total: torch.Tensor
    prompt: LossTerms
    head: HeadLoss | None


@torch.no_grad()
def validate(
    sam: Sam, images: torch.Tensor, labels: torch.Tensor, config: TrainConfig
) -> dict[str, float]:
    """Loss and mask IoUs of prompted fields on held-out images, without augmentation.

    images: (V, 3, S, S) uint8; labels: (V, S, S) int32, on the model's device. The prompts are
    the same at every validation of a run (drawn from the run's seed). Returns the means over
    prompts of loss, mask_loss, iou_loss, mask_iou (output the IoU head ranks first) and
    best_mask_iou (best of the three outputs), and the prompt counts.
    """
    sam.eval()
    head = field_head_of(sam)
    generator = _generator(images.device, config.seed, 0, _VALIDATION_STREAM)
    sums = dict.fromkeys(("mask_loss", "iou_loss", "mask_iou", "best_mask_iou"), 0.0)
    head_sums = dict.fromkeys(("head_loss", "extent_iou", "boundary_iou"), 0.0)
    prompts_seen, fields_seen = 0, 0
    for start in range(0, len(images), config.batch_size):
        batch = slice(start, start + config.batch_size)
        prompts = _prompts(labels[batch], config, generator)
        with _autocast(images.device, config):
            normalised = _normalise(sam, images[batch].float())
            embeddings = sam.image_encoder(normalised)
            logits, iou_pred = decode_prompts(sam, embeddings, prompts.image_index, prompts.points)
            maps = head(normalised, embeddings) if head is not None else None
        if maps is not None:
            truth = head_targets(labels[batch])
            weighted = _weighted_head_loss(maps, truth, config)
            head_sums["head_loss"] += float(weighted.total) * len(maps)
            for key, value in head_scores(maps, truth).items():
                head_sums[key] += value * len(maps)
        targets = prompt_targets(labels[batch], prompts, logits.shape[-1])
        terms = prompt_loss(logits, iou_pred, targets, prompts.is_field, config.focal_weight)
        fields = int(prompts.is_field.sum())
        prompts_seen += len(prompts)
        fields_seen += fields
        sums["iou_loss"] += float(terms.iou) * len(prompts)
        if fields:
            sums["mask_loss"] += float(terms.mask) * fields
            sums["mask_iou"] += float(terms.chosen_iou) * fields
            sums["best_mask_iou"] += float(terms.best_iou) * fields
    means = {
        "mask_loss": sums["mask_loss"] / max(fields_seen, 1),
        "iou_loss": sums["iou_loss"] / max(prompts_seen, 1),
        "mask_iou": sums["mask_iou"] / max(fields_seen, 1),
        "best_mask_iou": sums["best_mask_iou"] / max(fields_seen, 1),
    }
    row = {
        "loss": means["mask_loss"] + means["iou_loss"],
        **means,
        "prompts": prompts_seen,
        "field_prompts": fields_seen,
    }
    if head is not None:
        row.update({key: value / max(len(images), 1) for key, value in head_sums.items()})
    return row


def _weighted_head_loss(maps: torch.Tensor, truth: Any, config: TrainConfig) -> HeadLoss:
    return head_loss(
        maps,
        truth,
        extent_weight=config.extent_weight,
        boundary_weight=config.boundary_weight,
        depth_weight=config.depth_weight,
        boundary_pixel_weight=config.boundary_pixel_weight,
    )


def train_step(
    sam: Sam,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: TrainConfig,
    step: int,
) -> StepTerms:
    """One optimiser step on a random batch of the training images (0-based `step`).

    The loss is `prompt_weight` × SAM's prompted-mask loss, plus the field head's weighted
    terms when the model has a head."""
    device = images.device
    chosen = _batch_indices(len(images), config.batch_size, config.seed, step)
    generator = _generator(device, config.seed, step, _TRAIN_STREAM)
    batch_images, batch_labels = augment_batch(
        images[chosen.to(device)], labels[chosen.to(device)], config.augment, generator
    )
    prompts = _prompts(batch_labels, config, generator)
    for group in optimizer.param_groups:
        group["lr"] = config.lr_at(step) * group.get("lr_scale", 1.0)
    head = field_head_of(sam)
    with _autocast(device, config):
        normalised = _normalise(sam, batch_images)
        with torch.set_grad_enabled(not config.freeze_encoder):
            embeddings = sam.image_encoder(normalised)
        logits, iou_pred = decode_prompts(sam, embeddings, prompts.image_index, prompts.points)
        maps = head(normalised, embeddings) if head is not None else None
    targets = prompt_targets(batch_labels, prompts, logits.shape[-1])
    terms = prompt_loss(logits, iou_pred, targets, prompts.is_field, config.focal_weight)
    total = terms.total * config.prompt_weight
    head_terms = None
    if maps is not None:
        head_terms = _weighted_head_loss(maps, head_targets(batch_labels), config)
        total = total + head_terms.total
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    torch.nn.utils.clip_grad_norm_(sam.parameters(), config.grad_clip)
    optimizer.step()
    return StepTerms(
        total=total.detach(),
        prompt=terms.detached(),
        head=None if head_terms is None else head_terms.detached(),
    )


def _prompts(labels: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> PromptBatch:
    """The recipe's point prompts (`sample_prompts`) on (B, S, S) labels."""
    return sample_prompts(
        labels,
        field_prompts=config.field_prompts,
        background_prompts=config.background_prompts,
        interior_size=config.interior_size,
        generator=generator,
    )


def _normalise(sam: Sam, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) float RGB in 0..255 → SAM's normalised input."""
    return (images - sam.pixel_mean) / sam.pixel_std


def _autocast(device: torch.device, config: TrainConfig) -> torch.autocast:
    return torch.autocast(
        device_type=device.type,
        dtype=torch.bfloat16,
        enabled=config.bf16 and device.type == "cuda",
    )


def _seed(*keys: int) -> int:
    """A 63-bit seed mixed from integer keys (SeedSequence spreads nearby keys apart)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(device: torch.device, seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(_seed(seed, stream, step))


def _batch_indices(count: int, batch_size: int, seed: int, step: int) -> torch.Tensor:
    """(batch_size,) int64 image indices of a step: a random order, repeated if too few images."""
    generator = torch.Generator().manual_seed(_seed(seed, _BATCH_STREAM, step))
    rounds = math.ceil(batch_size / count)
    return torch.cat([torch.randperm(count, generator=generator) for _ in range(rounds)])[
        :batch_size
    ]


def stack_training_images(
    images: Sequence[TrainingImage], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, S, S) uint8 and (N, S, S) int32 tensors of `images` on `device`."""
    if not images:
        return torch.zeros(0, 3, 1, 1, dtype=torch.uint8), torch.zeros(0, 1, 1, dtype=torch.int32)
    rgb = torch.from_numpy(np.stack([image.rgb for image in images])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(np.stack([image.labels for image in images]))
    return rgb.contiguous().to(device), labels.to(device)
