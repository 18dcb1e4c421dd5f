"""Training a small Segment Anything model on field polygons, on a GPU or (small) on a CPU.

    dataset = load_training_set(Path("../shared/data/agoro-naip"), 512, val_fraction=0.2, seed=0)
    result = train_sam(dataset, Path("weights/lisegagr-fields-v1.pt"), TrainConfig(),
                       checkpoint_dir=Path("out/training/lisegagr-fields-v1"))

Each step augments a batch of images on the device, draws point prompts inside fields and on
ground, encodes the images once and decodes every prompt of the batch in one pass, and takes an
AdamW step on the recipe's loss. Randomness is drawn from generators seeded by (seed, step), so
a run is repeatable on the CPU and a resumed run continues exactly where the checkpoint was
taken. The result is an fp16 state dict, a summary JSON and a model card next to it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from segment_anything.modeling import Sam

from lisegagr_core.architectures import SamArchitecture
from lisegagr_core.devices import resolve_device
from lisegagr_core.errors import InputError
from lisegagr_core.field_head import (
    HeadLoss,
    field_head_of,
    head_loss,
    head_scores,
    head_targets,
)
from lisegagr_core.models import build_sam, model_description
from lisegagr_core.progress import ProgressCallback, ProgressUpdate, ignore_progress
from lisegagr_core.training.augment import augment_batch
from lisegagr_core.training.card import write_model_card
from lisegagr_core.training.data import TrainingImage, TrainingSet
from lisegagr_core.training.machine import device_name, machine
from lisegagr_core.training.objective import LossTerms, decode_prompts, prompt_loss
from lisegagr_core.training.prompts import prompt_targets, sample_prompts
from lisegagr_core.training.settings import TrainConfig
from lisegagr_core.training.warm_start import load_source, warm_start, with_source_architecture
from lisegagr_core.weights import sha256_file

log = logging.getLogger(__name__)

_CHECKPOINT_PATTERN = "step-*.pt"
# Independent random streams of a run, each seeded by (seed, stream, step).
_TRAIN_STREAM, _VALIDATION_STREAM, _BATCH_STREAM = 0, 1, 2
# Settings that may differ when a run resumes: they change no weight, only bookkeeping; and
# `steps`, which ends a run early (as many steps as the checkpoint has: the model is written
# from it) or extends it (the learning-rate schedule is stretched from there).
_RESUMABLE_CHANGES = frozenset(
    {"device", "val_every", "checkpoint_every", "keep_checkpoints", "log_every", "steps"}
)


@dataclass(frozen=True)
class StepTerms:
    """The losses of one step, detached: SAM's prompted masks and the field head's maps."""

    total: torch.Tensor
    prompt: LossTerms
    head: HeadLoss | None


@dataclass
class TrainingHistory:
    """Mean training losses per `log_every` steps, and every validation, as JSON-ready rows."""

    train: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, list[dict[str, float]]]:
        return {"train": self.train, "validation": self.validation}


@dataclass(frozen=True)
class TrainingResult:
    """What a finished run wrote and measured.

    `seconds` is the wall time of all steps and validations, summed over resumed runs.
    """

    model_path: Path
    summary_path: Path
    card_path: Path
    sha256: str
    size: int
    architecture: SamArchitecture
    steps: int
    device: str
    seconds: float
    history: TrainingHistory
    validation_names: tuple[str, ...]
    initialised_from: dict[str, Any] | None = None
    """The model it started from (name, sha256, description, its recorded AMG settings)."""


def summary_path_of(model_path: Path) -> Path:
    """Where the summary JSON of the model saved at `model_path` goes: ``NAME.summary.json``."""
    return model_path.with_name(f"{model_path.stem}.summary.json")


def card_path_of(model_path: Path) -> Path:
    """Where the model card of the model saved at `model_path` goes: ``NAME.md``."""
    return model_path.with_suffix(".md")


def initial_model(arch: SamArchitecture, seed: int) -> Sam:
    """A freshly initialised SAM of `arch`, drawn from `seed` (global random state untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_sam(arch)


def train_sam(
    dataset: TrainingSet,
    output: Path,
    config: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    data_description: str | None = None,
) -> TrainingResult:
    """Train a SAM on `dataset` and save it at `output` as an fp16 state dict.

    Checkpoints (model and optimiser state) go to `checkpoint_dir` every
    `config.checkpoint_every` steps, after the last step and on Ctrl-C; with `resume`, the run
    continues from the newest one there, which must come from the same settings and images.
    Next to `output` go ``NAME.summary.json`` and the model card ``NAME.md``; the card describes
    the training data with `data_description` when given. `progress` hears of each step (task
    "training", with the latest losses as its status).
    """
    device = resolve_device(config.device)
    config = with_source_architecture(config)
    arch = config.sam_architecture()
    if not dataset.train:
        raise InputError(f"{dataset.source}: no images are left for training.")
    sizes = {image.rgb.shape[0] for image in (*dataset.train, *dataset.validation)}
    if sizes != {arch.image_size}:
        raise ValueError(f"images are {sorted(sizes)} px but the model takes {arch.image_size}")
    sam = initial_model(arch, config.seed).to(device).train()
    initialised_from = _warm_start_from(config, sam)
    optimizer = _optimizer(sam, config)
    train_images, train_labels = stack_training_images(dataset.train, device)
    val_images, val_labels = stack_training_images(dataset.validation, device)
    split = {
        "train": [image.name for image in dataset.train],
        "validation": [image.name for image in dataset.validation],
    }
    start_step, history, seconds = 0, TrainingHistory(), 0.0
    if resume and checkpoint_dir is not None:
        latest = _latest_checkpoint(checkpoint_dir)
        if latest is not None:
            start_step, history, seconds = _restore(latest, sam, optimizer, config, split)
            log.info("resumed from %s at step %d", latest, start_step)

    completed = start_step
    started = time.perf_counter() - seconds
    window: list[StepTerms] = []
    parameters = sum(p.numel() for p in sam.parameters())
    log.info(
        "training %d parameters on %s from step %d", parameters, device_name(device), start_step
    )
    report = progress or ignore_progress
    report(ProgressUpdate("training", start_step, config.steps))
    try:
        for step in range(start_step, config.steps):
            terms = train_step(sam, optimizer, train_images, train_labels, config, step)
            completed = done = step + 1
            window.append(terms)
            last = done == config.steps
            if done % config.log_every == 0 or last:
                history.train.append(_train_row(window, done, config.lr_at(step), started))
                window.clear()
            if len(val_images) and (done % config.val_every == 0 or last):
                history.validation.append(
                    {"step": done, **validate(sam, val_images, val_labels, config)}
                )
                sam.train()
            if checkpoint_dir is not None and (done % config.checkpoint_every == 0 or last):
                _save_checkpoint(
                    checkpoint_dir, done, sam, optimizer, config, split, history, started
                )
            report(ProgressUpdate("training", done, config.steps, _status(history)))
    except KeyboardInterrupt:
        if checkpoint_dir is not None and completed > start_step:
            path = _save_checkpoint(
                checkpoint_dir, completed, sam, optimizer, config, split, history, started
            )
            log.warning("interrupted; resume from %s with the same command", path)
        raise
    seconds = time.perf_counter() - started
    return _write_outputs(
        sam,
        output,
        config,
        dataset,
        split,
        history,
        seconds,
        device,
        data_description,
        initialised_from,
    )


def _optimizer(sam: Sam, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over what trains: the field head at `head_lr`, the rest at `lr` (each group's
    `lr_scale` says its share of the schedule); a frozen encoder is left out."""
    if config.freeze_encoder:
        sam.image_encoder.requires_grad_(False)
    head = field_head_of(sam)
    head_ids = {id(p) for p in head.parameters()} if head is not None else set()
    trained = [p for p in sam.parameters() if p.requires_grad]
    groups: list[dict[str, Any]] = [
        {"params": [p for p in trained if id(p) not in head_ids], "lr_scale": 1.0}
    ]
    if head is not None:
        scale = (config.head_lr or config.lr) / config.lr
        groups.append({"params": list(head.parameters()), "lr_scale": scale})
    return torch.optim.AdamW(
        [group for group in groups if group["params"]],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )


def _warm_start_from(config: TrainConfig, sam: Sam) -> dict[str, Any] | None:
    """Load `config.init_from` into `sam`; what it was, for the summary (None: from scratch)."""
    if config.init_from is None:
        return None
    source = load_source(config.init_from)
    warm_start(sam, source)
    description = model_description(source)
    log.info("starting from %s", description)
    return {
        "name": source.name,
        "sha256": source.checkpoint_sha256,
        "description": description,
        "settings": dict(source.settings),
    }


def _write_outputs(
    sam: Sam,
    output: Path,
    config: TrainConfig,
    dataset: TrainingSet,
    split: dict[str, list[str]],
    history: TrainingHistory,
    seconds: float,
    device: torch.device,
    data_description: str | None,
    initialised_from: dict[str, Any] | None,
) -> TrainingResult:
    """Save the fp16 model, its summary JSON and its model card; describe them."""
    output.parent.mkdir(parents=True, exist_ok=True)
    size, sha256 = save_fp16_state_dict(sam, output)
    result = TrainingResult(
        model_path=output,
        summary_path=summary_path_of(output),
        card_path=card_path_of(output),
        sha256=sha256,
        size=size,
        architecture=config.sam_architecture(),
        steps=config.steps,
        device=device_name(device),
        seconds=seconds,
        history=history,
        validation_names=tuple(split["validation"]),
        initialised_from=initialised_from,
    )
    summary = _summary(
        result, sam, config, dataset, split, device, data_description, initialised_from
    )
    result.summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_model_card(summary, result.card_path)
    log.info("saved %s (%d bytes, sha256 %s) in %.0f s", output, size, sha256[:12], seconds)
    return result


def save_fp16_state_dict(sam: Sam, path: Path) -> tuple[int, str]:
    """Save `sam`'s state dict with floating tensors in float16; return (bytes, sha256).

    The file holds only named tensors, so ``torch.load(path, weights_only=True)`` reads it. A
    weight beyond float16's range raises ValueError (such a model has diverged).
    """
    state = {
        key: (tensor.detach().to("cpu", torch.float16) if tensor.is_floating_point() else tensor)
        for key, tensor in sam.state_dict().items()
    }
    overflowing = [key for key, tensor in state.items() if not tensor.isfinite().all()]
    if overflowing:
        raise ValueError(f"{overflowing[0]} does not fit float16 (values beyond ±65504)")
    partial = path.with_name(path.name + ".part")
    torch.save(state, partial)
    os.replace(partial, path)
    return path.stat().st_size, sha256_file(path)


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
        prompts = sample_prompts(
            labels[batch],
            field_prompts=config.field_prompts,
            background_prompts=config.background_prompts,
            interior_size=config.interior_size,
            generator=generator,
        )
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
    prompts = sample_prompts(
        batch_labels,
        field_prompts=config.field_prompts,
        background_prompts=config.background_prompts,
        interior_size=config.interior_size,
        generator=generator,
    )
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


def _train_row(
    window: Sequence[StepTerms], done: int, lr: float, started: float
) -> dict[str, float]:
    def mean(values: Sequence[float]) -> float:
        finite = [value for value in values if math.isfinite(value)]
        return sum(finite) / len(finite) if finite else float("nan")

    def prompt(name: str) -> float:
        return mean([float(getattr(terms.prompt, name)) for terms in window])

    row = {
        "step": done,
        "loss": mean([float(terms.total) for terms in window]),
        "mask_loss": prompt("mask"),
        "iou_loss": prompt("iou"),
        "mask_iou": prompt("chosen_iou"),
    }
    heads = [terms.head for terms in window if terms.head is not None]
    for name in ("extent", "boundary", "depth") if heads else ():
        row[f"{name}_loss"] = mean([float(getattr(terms, name)) for terms in heads])
    return {**row, "lr": lr, "seconds": round(time.perf_counter() - started, 2)}


def _status(history: TrainingHistory) -> str:
    parts = []
    if history.train:
        parts.append(f"loss {history.train[-1]['loss']:.3f}")
    if history.validation:
        row = history.validation[-1]
        parts.append(f"val loss {row['loss']:.3f} · val mask IoU {row['mask_iou']:.2f}")
        if "extent_iou" in row:
            parts.append(f"val extent IoU {row['extent_iou']:.2f}")
    return " · ".join(parts)


def _save_checkpoint(
    directory: Path,
    step: int,
    sam: Sam,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    split: dict[str, list[str]],
    history: TrainingHistory,
    started: float,
) -> Path:
    """Write ``step-NNNNNN.pt`` (atomically) and prune all but the newest `keep_checkpoints`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:06d}.pt"
    partial = path.with_name(path.name + ".part")
    torch.save(
        {
            "step": step,
            "model": sam.state_dict(),
            "optimizer": optimizer.state_dict(),
            "config": config.model_dump(mode="json"),
            "split": split,
            "history": history.to_dict(),
            "seconds": time.perf_counter() - started,
        },
        partial,
    )
    os.replace(partial, path)
    for old in sorted(directory.glob(_CHECKPOINT_PATTERN))[: -config.keep_checkpoints]:
        old.unlink()
    return path


def _latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = sorted(directory.glob(_CHECKPOINT_PATTERN)) if directory.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def _restore(
    path: Path,
    sam: Sam,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    split: dict[str, list[str]],
) -> tuple[int, TrainingHistory, float]:
    """Load a checkpoint into `sam` and `optimizer`; (step, history, seconds) to go on from."""
    try:
        saved: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types for truncated or foreign files
        raise InputError(f"{path} is not a readable training checkpoint ({err}).") from err
    current = config.model_dump(mode="json")
    changed = sorted(
        key
        for key in current
        if key not in _RESUMABLE_CHANGES and saved["config"].get(key) != current[key]
    )
    if changed:
        raise InputError(
            f"{path} was saved by a run with other settings ({', '.join(changed)}); "
            "delete its folder or pass --no-resume to start afresh."
        )
    if saved["split"] != split:
        raise InputError(
            f"{path} was saved by a run on other images; "
            "delete its folder or pass --no-resume to start afresh."
        )
    if int(saved["step"]) > config.steps:
        raise InputError(
            f"{path} has {saved['step']} steps already, more than the {config.steps} asked; "
            f"pass --steps {saved['step']} to write the model from it."
        )
    sam.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    history = TrainingHistory(**saved["history"])
    return int(saved["step"]), history, float(saved["seconds"])


def _summary(
    result: TrainingResult,
    sam: Sam,
    config: TrainConfig,
    dataset: TrainingSet,
    split: dict[str, list[str]],
    device: torch.device,
    data_description: str | None,
    initialised_from: dict[str, Any] | None,
) -> dict[str, Any]:
    """The JSON record of a finished run (also the model card's source)."""
    final = result.history.validation[-1] if result.history.validation else None
    return {
        "name": result.model_path.stem,
        "model_file": result.model_path.name,
        "sha256": result.sha256,
        "size_bytes": result.size,
        "dtype": "float16",
        "parameters": sum(p.numel() for p in sam.parameters()),
        "architecture": result.architecture.to_dict(),
        "config": config.model_dump(mode="json"),
        "initialised_from": initialised_from,
        "data": {
            "source": dataset.source,
            "description": data_description,
            **dataset.counts(),
            "train_names": split["train"],
            "validation_names": split["validation"],
        },
        "steps": result.steps,
        "device": result.device,
        "machine": machine(device),
        "wall_seconds": round(result.seconds, 1),
        "seconds_per_step": round(result.seconds / max(result.steps, 1), 4),
        "final_validation": final,
        "history": result.history.to_dict(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
