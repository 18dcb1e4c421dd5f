"""Training a small Segment Anything model on field polygons, on a GPU or (small) on a CPU.

    dataset = load_training_set(Path("../shared/data/agoro-naip"), 512, val_fraction=0.2, seed=0)
    result = train_sam(dataset, Path("weights/lisegagr-fields-v1.pt"), TrainConfig(),
                       checkpoint_dir=Path("out/training/lisegagr-fields-v1"))

Each step (`step.train_step`) augments a batch of images on the device, draws point prompts
inside fields and on ground, encodes the images once and decodes every prompt of the batch in
one pass, and takes an AdamW step on the recipe's loss. Randomness is drawn from generators
seeded by (seed, step), so a run is repeatable on the CPU and a resumed run continues exactly
where the checkpoint was taken (`checkpoints`). The result is an fp16 state dict, a summary
JSON and a model card next to it (`results`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from lisegagr_core.architectures import SamArchitecture
from lisegagr_core.devices import resolve_device
from lisegagr_core.errors import InputError
from lisegagr_core.field_head import field_head_of
from lisegagr_core.models import build_sam, model_description
from lisegagr_core.progress import ProgressCallback, ProgressUpdate, ignore_progress
from lisegagr_core.training.checkpoints import (
    latest_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from lisegagr_core.training.data import TrainingSet
from lisegagr_core.training.machine import device_name
from lisegagr_core.training.results import TrainingHistory, TrainingResult, write_outputs
from lisegagr_core.training.settings import TrainConfig
from lisegagr_core.training.step import (
    StepTerms,
    stack_training_images,
    train_step,
    validate,
)
from lisegagr_core.training.warm_start import load_source, warm_start, with_source_architecture

log = logging.getLogger(__name__)


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
        latest = latest_checkpoint(checkpoint_dir)
        if latest is not None:
            start_step, history, seconds = restore_checkpoint(latest, sam, optimizer, config, split)
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
                save_checkpoint(
                    checkpoint_dir, done, sam, optimizer, config, split, history, started
                )
            report(ProgressUpdate("training", done, config.steps, _status(history)))
    except KeyboardInterrupt:
        if checkpoint_dir is not None and completed > start_step:
            path = save_checkpoint(
                checkpoint_dir, completed, sam, optimizer, config, split, history, started
            )
            log.warning("interrupted; resume from %s with the same command", path)
        raise
    seconds = time.perf_counter() - started
    return write_outputs(
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
