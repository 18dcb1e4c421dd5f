"""Segment Anything architectures: the shape of a SAM, Meta's presets and the tiny test model.

Plain data, without torch, so that the weights manifest (and the CLI that reads it) can name
and check architectures cheaply; `lisegagr_core.models` builds and loads the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

# The built-in model with seeded random weights; it has no checkpoint file.
TINY_MODEL_NAME = "tiny"
# Fields that may be 0 (no global attention blocks; no field head).
_MAY_BE_ZERO = frozenset({"encoder_global_attn_indexes", "field_head_width"})


@dataclass(frozen=True)
class SamArchitecture:
    """The shape of a SAM: image encoder (ViT), prompt encoder and mask decoder.

    Field names follow ``segment_anything/build_sam.py``; defaults are Meta's values.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    vit_patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    iou_head_depth: int = 3
    num_multimask_outputs: int = 3
    field_head_width: int = 0
    """Full-resolution width of the dense field head (`lisegagr_core.field_head`); 0: none."""

    def __post_init__(self) -> None:
        for item in fields(self):
            value = getattr(self, item.name)
            values = value if isinstance(value, tuple) else (value,)
            if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
                raise ValueError(f"{item.name} must be an integer, not {value!r}")
            if item.name in _MAY_BE_ZERO:
                if any(v < 0 for v in values):
                    raise ValueError(f"{item.name} must not be negative, not {value}")
            elif value < 1:
                raise ValueError(f"{item.name} must be at least 1, not {value}")
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise ValueError("encoder_num_heads must divide encoder_embed_dim")
        if self.image_size % self.vit_patch_size:
            raise ValueError("vit_patch_size must divide image_size")
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise ValueError("encoder_global_attn_indexes must lie in 0..encoder_depth-1")
        # The decoder upscales to prompt_embed_dim // 8 channels, and its cross-attention
        # works at half width (attention downsample rate 2), split over decoder_num_heads.
        if self.prompt_embed_dim % 8:
            raise ValueError("prompt_embed_dim must be a multiple of 8")
        if (self.prompt_embed_dim // 2) % self.decoder_num_heads:
            raise ValueError("decoder_num_heads must divide prompt_embed_dim // 2")

    @property
    def image_embedding_size(self) -> int:
        """Side of the image embedding grid, in patches."""
        return self.image_size // self.vit_patch_size

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (the attention indexes as a list)."""
        raw = asdict(self)
        if not self.field_head_width:  # records of models without a head stay as they were
            del raw["field_head_width"]
        raw["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return raw

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> SamArchitecture:
        """The inverse of `to_dict`; unknown or missing fields raise ValueError."""
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ValueError(f"unknown architecture fields {unknown}")
        values = dict(raw)
        indexes = values.get("encoder_global_attn_indexes")
        if isinstance(indexes, list | tuple):
            values["encoder_global_attn_indexes"] = tuple(indexes)
        try:
            return cls(**values)
        except TypeError as err:
            raise ValueError(str(err)) from err


VIT_B = SamArchitecture(768, 12, 12, (2, 5, 8, 11))
VIT_L = SamArchitecture(1024, 24, 16, (5, 11, 17, 23))
VIT_H = SamArchitecture(1280, 32, 16, (7, 15, 23, 31))
# A real SAM, small enough to run the whole pipeline on a CPU in tests.
TINY = SamArchitecture(
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=256,
    window_size=8,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)
ARCHITECTURES: dict[str, SamArchitecture] = {
    "vit_b": VIT_B,
    "vit_l": VIT_L,
    "vit_h": VIT_H,
    TINY_MODEL_NAME: TINY,
}


def architecture_name(arch: SamArchitecture) -> str:
    """The preset name of `arch` (``vit_b``…), or ``custom SAM``."""
    for name, preset in ARCHITECTURES.items():
        if preset == arch:
            return name
    return "custom SAM"
