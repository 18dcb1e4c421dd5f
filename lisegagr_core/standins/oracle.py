"""A SAM whose mask heads answer from the image's own colour segments: tests and benchmarks.

A SAM with random weights lets almost no mask through AMG's quality filters, so neither the
cost nor the results of mask generation after the decoder can be studied with it. The
oracle keeps every real module running (encoder, prompt encoder, mask decoder: their cost
is unchanged) and replaces only the decoder's answer, through forward hooks:

- the encoder's input is segmented (Felzenszwalb's graph segmentation, scikit-image) in the
  decoder's low-resolution frame, one segment map per image, and the image's embedding is
  tagged with the index of its map;
- for each point prompt the three candidate masks are the segment under the point, that
  segment grown by two cells and shrunk by one, as logits whose sharpness (hence stability)
  and predicted IoU vary from prompt to prompt, deterministically.

So AMG sees what a trained SAM shows on farmland: many prompts per segment, masks that
pass or fail the filters, near-duplicates for NMS. Nothing here is SAM's quality.

    handle = install_segment_oracle(sam)      # sam: a model of its own (hooks are added)
    ...                                        # any generator over `sam`
    handle.remove()
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from skimage.segmentation import felzenszwalb
from torch.utils.hooks import RemovableHandle

#: Segment maps remembered (the embeddings of that many recent images can be decoded).
_REMEMBERED = 120


@dataclass
class SegmentOracle:
    """The hooks' shared state; `remove()` restores the model's own behaviour."""

    sam: Sam
    scale: float = 200.0
    min_fraction: float = 1 / 400
    maps: OrderedDict[int, torch.Tensor] = field(default_factory=OrderedDict)
    pending: list[int] = field(default_factory=list)
    points: torch.Tensor | None = None
    handles: list[RemovableHandle] = field(default_factory=list)
    seconds: float = 0.0
    """Time spent in the oracle itself (segmenting, answering): benchmarks subtract it."""
    _next_tag: int = 1

    @contextmanager
    def timed(self) -> Iterator[None]:
        if self.sam.device.type == "cuda":
            torch.cuda.synchronize(self.sam.device)
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sam.device.type == "cuda":
                torch.cuda.synchronize(self.sam.device)
            self.seconds += time.perf_counter() - started

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def segment_inputs(self, x: torch.Tensor) -> None:
        """Segment maps of a batch of normalised, padded encoder inputs (B, 3, S, S)."""
        sam = self.sam
        rgb = x.float() * sam.pixel_std + sam.pixel_mean
        low = F.avg_pool2d(rgb, 4).clamp(0, 255).permute(0, 2, 3, 1).cpu().numpy()
        for image in low.astype(np.uint8):
            min_size = max(4, round(self.min_fraction * image.shape[0] * image.shape[1]))
            labels = felzenszwalb(image, scale=self.scale, sigma=0.5, min_size=min_size)
            tag = self._next_tag
            self._next_tag = self._next_tag % _REMEMBERED + 1
            self.maps[tag] = torch.as_tensor(labels, device=x.device)
            self.maps.move_to_end(tag)
            self.pending.append(tag)

    def tag_features(self, features: torch.Tensor) -> torch.Tensor:
        tags = self.pending[-len(features) :]
        self.pending.clear()
        features = features.clone()
        features[:, 0, 0, 0] = torch.tensor(tags, dtype=features.dtype, device=features.device)
        return features

    def answer(self, features: torch.Tensor, logits: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Oracle logits and IoU predictions shaped like the real decoder's (B, 3, h, w)."""
        assert self.points is not None, "the prompt encoder ran without points"
        labels = self.maps[int(features[0, 0, 0, 0].round().item())]
        h, w = logits.shape[-2:]
        cells = (self.points[:, 0, :] / 4).long()
        x, y = cells[:, 0].clamp(0, w - 1), cells[:, 1].clamp(0, h - 1)
        segment = (labels[None] == labels[y, x][:, None, None]).float()[:, None]
        grown = F.max_pool2d(segment, 5, stride=1, padding=2)
        shrunk = -F.max_pool2d(-segment, 3, stride=1, padding=1)
        masks = torch.cat([segment, grown, shrunk], dim=1)
        soft = F.avg_pool2d(masks, 3, stride=1, padding=1, count_include_pad=False)
        noise = _hash_noise(self.points[:, 0, :], 3)
        sharpness = 1.5 + 12.0 * noise
        oracle_logits = sharpness[:, :, None, None] * (2 * soft - 1)
        iou = 0.98 - 0.04 * torch.arange(3, device=noise.device) - 0.12 * noise.flip(-1)
        return oracle_logits.to(logits.dtype), iou.to(logits.dtype)


def _hash_noise(points: torch.Tensor, n: int) -> torch.Tensor:
    """(B, n) values in [0, 1) that depend only on the prompt's coordinates (to 1/16 px)."""
    k = torch.arange(1, n + 1, device=points.device, dtype=torch.float64)[None]
    px, py = (points[:, :1].double() * 16).round(), (points[:, 1:2].double() * 16).round()
    value = torch.sin(px * 12.9898 * k + py * 78.233 + k * 37.719) * 43758.5453
    return (value - torch.floor(value)).float()


def install_segment_oracle(
    sam: Sam, *, scale: float = 200.0, min_fraction: float = 1 / 400
) -> SegmentOracle:
    """Hook `sam` so that its mask decoder answers from colour segments (see the module).

    scale: Felzenszwalb's scale (larger: larger segments); min_fraction: the smallest
    segment, as a share of the low-resolution frame.
    """
    oracle = SegmentOracle(sam, scale=scale, min_fraction=min_fraction)
    encoder = sam.image_encoder

    def before_patch_embed(_module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        with oracle.timed():
            oracle.segment_inputs(args[0])

    def after_neck(_module: torch.nn.Module, _args: Any, output: torch.Tensor) -> torch.Tensor:
        return oracle.tag_features(output)

    def before_prompt(_module: torch.nn.Module, _args: Any, kwargs: dict[str, Any]) -> None:
        points = kwargs.get("points")
        oracle.points = None if points is None else points[0]

    def after_decoder(
        _module: torch.nn.Module, _args: Any, kwargs: dict[str, Any], output: Any
    ) -> tuple[torch.Tensor, ...]:
        logits, _ = output
        with oracle.timed():
            return oracle.answer(kwargs["image_embeddings"], logits)

    oracle.handles = [
        encoder.patch_embed.register_forward_pre_hook(before_patch_embed),
        encoder.neck.register_forward_hook(after_neck),
        sam.prompt_encoder.register_forward_pre_hook(before_prompt, with_kwargs=True),
        sam.mask_decoder.register_forward_hook(after_decoder, with_kwargs=True),
    ]
    return oracle
