"""Starting a training run from a trained SAM instead of random weights (fine-tuning).

    source = load_sam("lisegagr-fields-v1", device="cpu")
    sam = initial_model(arch, seed)
    warm_start(sam, source)          # the same architecture, or another input size

The source may take another input size than the model being trained: its absolute positional
embedding is resized bicubically (as ViT fine-tuning at a new resolution does) and the relative
positional tables of its global-attention blocks linearly (as `segment_anything`'s own
`get_rel_pos` does when the sizes differ). Any other difference in shape, or a missing or extra
tensor, is refused: warm starts across widths or depths are not fine-tuning.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from lisegagr_core.errors import InputError
from lisegagr_core.models import LoadedSam, load_sam, model_description
from lisegagr_core.training.settings import TrainConfig
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR

_POS_EMBED = "image_encoder.pos_embed"
_HEAD_PREFIX = "field_head."
_REL_POS_SUFFIXES = (".attn.rel_pos_h", ".attn.rel_pos_w")


def load_source(init_from: str) -> LoadedSam:
    """The model to start from, on the CPU: a manifest name, or a path read with the manifest
    beside it (which names a project model's architecture)."""
    path = Path(init_from)
    weights_dir = path.parent if path.is_file() else DEFAULT_WEIGHTS_DIR
    return load_sam(init_from, weights_dir=weights_dir, device="cpu")


def with_source_architecture(config: TrainConfig) -> TrainConfig:
    """`config`, fine-tuning in the architecture of the model it starts from unless it names
    one itself (an `input_size` still applies)."""
    if config.init_from is None or "architecture" in config.model_fields_set:
        return config
    architecture = load_source(config.init_from).architecture.to_dict()
    return TrainConfig.model_validate({**config.model_dump(), "architecture": architecture})


def warm_start(sam: Sam, source: LoadedSam) -> None:
    """Copy `source`'s weights into `sam`, resizing positional tables to `sam`'s input size."""
    target = sam.state_dict()
    adapted = adapt_state_dict(source.model.state_dict(), target, model_description(source))
    sam.load_state_dict(adapted)


def adapt_state_dict(
    state: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor], shown: str
) -> dict[str, torch.Tensor]:
    """`state` reshaped to fit `target` key for key; InputError naming `shown` when it cannot."""
    # A field head the source lacks starts fresh: adding one is what fine-tuning may do.
    fresh = {key for key in target if key.startswith(_HEAD_PREFIX) and key not in state}
    missing = sorted(set(target) - set(state) - fresh)
    unexpected = sorted(set(state) - set(target))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise InputError(
            f"{shown} cannot start this training: its tensors differ from the architecture's "
            f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {example}); "
            "train with the architecture it was made with (--arch)."
        )
    adapted: dict[str, torch.Tensor] = {}
    for key, wanted in target.items():
        if key in fresh:
            adapted[key] = wanted.detach().clone()
            continue
        tensor = state[key].detach().to(device=wanted.device, dtype=wanted.dtype)
        if tensor.shape != wanted.shape:
            tensor = _resize(key, tensor, wanted.shape, shown)
        adapted[key] = tensor.clone()
    return adapted


def _resize(key: str, tensor: torch.Tensor, shape: torch.Size, shown: str) -> torch.Tensor:
    """A positional table resized to `shape`; any other tensor of another shape is refused."""
    if key == _POS_EMBED and tensor.dim() == 4 and tensor.shape[3] == shape[3]:
        # (1, H, W, C): interpolate over the token grid, as for any ViT at a new resolution.
        grid = F.interpolate(tensor.permute(0, 3, 1, 2), size=(shape[1], shape[2]), mode="bicubic")
        return grid.permute(0, 2, 3, 1)
    if key.endswith(_REL_POS_SUFFIXES) and tensor.dim() == 2 and tensor.shape[1] == shape[1]:
        # (2·size − 1, head_dim): segment_anything's get_rel_pos interpolation, done once.
        table = F.interpolate(tensor.T.unsqueeze(0), size=shape[0], mode="linear")
        return table.squeeze(0).T
    raise InputError(
        f"{shown} cannot start this training: {key} is {tuple(tensor.shape)} but the "
        f"architecture needs {tuple(shape)}; only the input size may differ."
    )
