"""What a finished training run writes next to its model and reports: the fp16 state dict,
``NAME.summary.json`` and the model card ``NAME.md``, and the `TrainingResult`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from segment_anything.modeling import Sam

from lisegagr_core.architectures import SamArchitecture
from lisegagr_core.training.card import write_model_card
from lisegagr_core.training.data import TrainingSet
from lisegagr_core.training.machine import device_name, machine
from lisegagr_core.training.settings import TrainConfig
from lisegagr_core.weights import sha256_file

log = logging.getLogger(__name__)


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


def write_outputs(
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
