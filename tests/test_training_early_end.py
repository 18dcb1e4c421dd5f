"""A training run can be ended early from its newest checkpoint, or extended."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lisegagr_core.errors import InputError
from lisegagr_core.training import train_sam

from .test_field_head import _head_config, _synthetic_set


def test_a_run_ends_early_from_its_checkpoint_and_refuses_fewer_steps(tmp_path: Path) -> None:
    data = _synthetic_set(3)
    checkpoints = tmp_path / "checkpoints"
    config = _head_config(steps=4, checkpoint_every=2, val_every=2)
    train_sam(data, tmp_path / "full.pt", config, checkpoint_dir=checkpoints)
    (checkpoints / "step-000004.pt").unlink()  # as if stopped after step 2
    saved = torch.load(checkpoints / "step-000002.pt", weights_only=True)["model"]
    early = train_sam(
        data,
        tmp_path / "early.pt",
        config.model_copy(update={"steps": 2}),
        checkpoint_dir=checkpoints,
    )
    assert early.steps == 2
    written = torch.load(early.model_path, weights_only=True)
    for key, tensor in written.items():
        assert torch.equal(tensor, saved[key].half() if tensor.is_floating_point() else saved[key])
    with pytest.raises(InputError, match="pass --steps 2 to write the model from it"):
        train_sam(
            data,
            tmp_path / "fewer.pt",
            config.model_copy(update={"steps": 1}),
            checkpoint_dir=checkpoints,
        )
