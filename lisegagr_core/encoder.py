"""SAM's image encoder, faster: fused attention, reduced precision, batches of images.

segment_anything's `Attention` materialises the (tokens × tokens) attention matrix in fp32,
adds the decomposed relative-position bias to it and soft-maxes it by hand. `sdpa_attention`
computes the same bias once and hands it to `scaled_dot_product_attention` as an additive
mask, so PyTorch picks a fused kernel (memory-efficient attention on CUDA, which accepts an
arbitrary bias) and the encoder can run in bf16. `FusedImageEncoder` runs the model's own
modules and parameters this way without changing the model.

    encoder = ImageEncoder(sam, precision="bf16")     # fused attention, bf16 autocast
    features = encoder.encode([image_a, image_b])     # (2, C, 64, 64), one encoder call
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from segment_anything.modeling import Sam
from segment_anything.modeling.image_encoder import (
    Attention,
    Block,
    ImageEncoderViT,
    get_rel_pos,
    window_partition,
    window_unpartition,
)
from segment_anything.utils.transforms import ResizeLongestSide

from lisegagr_core.config import Precision

log = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rel_pos_bias(
    q: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    size: tuple[int, int],
) -> torch.Tensor:
    """SAM's decomposed relative-position term as an additive attention bias.

    q: (B, H*W, C) queries (not scaled). Returns (B, H*W, H*W), the quantity
    ``segment_anything.modeling.image_encoder.add_decomposed_rel_pos`` adds to the logits.
    """
    h, w = size
    rh = get_rel_pos(h, h, rel_pos_h).to(q.dtype)
    rw = get_rel_pos(w, w, rel_pos_w).to(q.dtype)
    b, _, dim = q.shape
    r_q = q.reshape(b, h, w, dim)
    bias_h = torch.einsum("bhwc,hkc->bhwk", r_q, rh)
    bias_w = torch.einsum("bhwc,wkc->bhwk", r_q, rw)
    return (bias_h[:, :, :, :, None] + bias_w[:, :, :, None, :]).reshape(b, h * w, h * w)


def sdpa_attention(attention: Attention, x: torch.Tensor) -> torch.Tensor:
    """`attention`'s forward as one fused `scaled_dot_product_attention` call.

    x: (B, H, W, C). Same parameters, same result as ``attention(x)`` up to rounding.
    """
    b, h, w, _ = x.shape
    qkv = attention.qkv(x).reshape(b, h * w, 3, attention.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.reshape(3, b * attention.num_heads, h * w, -1).unbind(0)
    bias = None
    if attention.use_rel_pos:
        bias = rel_pos_bias(q, attention.rel_pos_h, attention.rel_pos_w, (h, w))
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=attention.scale)
    out = out.view(b, attention.num_heads, h, w, -1).permute(0, 2, 3, 1, 4).reshape(b, h, w, -1)
    return attention.proj(out)


def _fused_block(block: Block, x: torch.Tensor) -> torch.Tensor:
    """`Block.forward` with the attention fused."""
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        size = (x.shape[1], x.shape[2])
        x, padded = window_partition(x, block.window_size)
        x = window_unpartition(sdpa_attention(block.attn, x), block.window_size, padded, size)
    else:
        x = sdpa_attention(block.attn, x)
    x = shortcut + x
    return x + block.mlp(block.norm2(x))


class FusedImageEncoder(torch.nn.Module):
    """A view of a SAM `ImageEncoderViT` that runs it with fused attention.

    It holds the original encoder (its parameters, not a copy) and leaves it untouched, so
    the model shared by other callers keeps segment_anything's own forward.
    """

    def __init__(self, encoder: ImageEncoderViT) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder
        x = encoder.patch_embed(x)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks:
            x = _fused_block(block, x)
        return encoder.neck(x.permute(0, 3, 1, 2))


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on CUDA (where it is fast and close to fp32) and fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[precision]


_SHARED: weakref.WeakKeyDictionary[Sam, dict[tuple[str, bool], ImageEncoder]] = (
    weakref.WeakKeyDictionary()
)


class ImageEncoder:
    """Images in, SAM image embeddings out: several images per encoder call.

    Each image is resized so its longer side is the model's input size, normalised and
    padded to a square as `SamPredictor.set_image` does; the embeddings are returned in fp32
    whatever the precision the encoder ran in. `compile=True` wraps the encoder in
    `torch.compile` (worth it on CUDA for long runs; the first call pays the compilation).
    """

    def __init__(
        self,
        sam: Sam,
        *,
        precision: Precision = "auto",
        fused: bool = True,
        compile: bool = False,
        max_batch: int | None = None,
    ) -> None:
        self.sam = sam
        self.device = sam.device
        self.dtype = resolve_precision(precision, self.device)
        self.transform = ResizeLongestSide(sam.image_encoder.img_size)
        self._encoder: torch.nn.Module = (
            FusedImageEncoder(sam.image_encoder) if fused else sam.image_encoder
        )
        if compile:
            self._encoder = torch.compile(self._encoder)  # type: ignore[assignment]
        self.max_batch = max_batch or (8 if self.device.type == "cuda" else 2)

    @classmethod
    def shared(
        cls, sam: Sam, *, precision: Precision = "auto", compile: bool = False
    ) -> ImageEncoder:
        """The encoder of `sam` with these settings, made once per model and process.

        A mask source is built per tile; sharing the encoder keeps a compiled one compiled.
        """
        per_model = _SHARED.setdefault(sam, {})
        key = (precision, compile)
        if key not in per_model:
            per_model[key] = cls(sam, precision=precision, compile=compile)
        return per_model[key]

    def input_size(self, shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of an image of `shape` once resized for the encoder (before padding)."""
        h, w = ResizeLongestSide.get_preprocess_shape(
            shape[0], shape[1], self.transform.target_length
        )
        return (h, w)

    def prepare(self, image: NDArray[np.uint8]) -> torch.Tensor:
        """(3, S, S) normalised, padded model input of an (H, W, 3) uint8 image."""
        resized = self.transform.apply_image(image)
        tensor = torch.as_tensor(resized, device=self.device).permute(2, 0, 1).contiguous()
        return self.sam.preprocess(tensor[None].float())[0]

    @torch.inference_mode()
    def encode(self, images: Sequence[NDArray[np.uint8]]) -> torch.Tensor:
        """(N, C, g, g) fp32 embeddings of N images, `max_batch` images per encoder call."""
        return self.encode_prepared([self.prepare(image) for image in images])

    @torch.inference_mode()
    def encode_prepared(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """`encode` of images already `prepare`d (when their model inputs are needed too)."""
        outputs = []
        for start in range(0, len(inputs), self.max_batch):
            batch = torch.stack(list(inputs[start : start + self.max_batch]))
            with torch.autocast(
                self.device.type, dtype=self.dtype, enabled=self.dtype != torch.float32
            ):
                outputs.append(self._encoder(batch).float())
        return torch.cat(outputs)
