"""Training checkpoints: the model and optimiser state every `checkpoint_every` steps, the
newest `keep_checkpoints` kept, and a run resumed from the newest one, refused when it was
saved with other settings or on other images.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from lisegagr_core.errors import InputError
from lisegagr_core.training.results import TrainingHistory
from lisegagr_core.training.settings import TrainConfig

_CHECKPOINT_PATTERN = "step-*.pt"
# Settings that may differ when a run resumes: they change no weight, only bookkeeping; and
# `steps`, which ends a run early (as many steps as the checkpoint has: the model is written
# from it) or extends it (the learning-rate schedule is stretched from there).
_RESUMABLE_CHANGES = frozenset(
    {"device", "val_every", "checkpoint_every", "keep_checkpoints", "log_every", "steps"}
)


def save_checkpoint(
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


def latest_checkpoint(directory: Path) -> Path | None:
    checkpoints = sorted(directory.glob(_CHECKPOINT_PATTERN)) if directory.is_dir() else []
    return checkpoints[-1] if checkpoints else None


def restore_checkpoint(
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
