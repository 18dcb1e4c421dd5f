"""Automatic mask generation with segment_anything's results at a fraction of its cost.

`SamAutomaticMaskGenerator` upsamples every prompt's three candidate masks to the full image
before it filters them, run-length encodes every survivor on the CPU, and decodes the point
grid 64 prompts at a time. On a tile most candidates fail the predicted-IoU or stability
filter, so most of that work is thrown away. `FastMaskGenerator` keeps the same decisions
and changes where they are taken:

1. the prompt grid is decoded in batches sized to the device (the whole grid where memory
   allows);
2. candidates are filtered by predicted IoU, then by the stability score of the decoder's
   low-resolution logits, `margin` below the threshold (that score runs close to the
   full-resolution one, mostly above it: a mask the full-resolution test would keep is
   lost only if its low-resolution score is more than `margin` lower);
3. only the survivors are upsampled (exactly as `Sam.postprocess_masks` does), and their
   stability is checked again at full resolution with the real threshold: the masks kept
   are the ones segment_anything keeps;
4. boxes and box NMS (`torchvision.ops.batched_nms`) run on the device, and the masks stay
   there as a boolean tensor: no run-length round trip.

Several images (tiles, refinement crops) can share one encoder call
(`FastMaskGenerator.generate_many`). Candidates travel between the stages as typed batches
of device tensors (`mask_batches`: `LowResCandidates`, then `GeneratedMasks`) that filter and
concatenate all their rows together, as segment_anything's `MaskData` does. `timings` accumulates
seconds per stage (encoder, decoder, post-processing) for benchmarks; with
`synchronize=True` they are exact on CUDA.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from segment_anything.modeling import Sam
from segment_anything.utils.amg import (
    batched_mask_to_box,
    build_all_layer_point_grids,
    calculate_stability_score,
    generate_crop_boxes,
    is_box_near_crop_edge,
    remove_small_regions,
)
from torchvision.ops import batched_nms, box_area

from lisegagr_core.config import AmgSettings
from lisegagr_core.encoder import ImageEncoder
from lisegagr_core.field_maps import FieldMaps, head_prompts, predict_field_maps
from lisegagr_core.mask_batches import GeneratedMasks, LowResCandidates
from lisegagr_core.whitening import white_pixels

# segment_anything's defaults for the crop settings AmgSettings does not expose.
_CROP_OVERLAP_RATIO = 512 / 1500
_CROP_NMS_THRESH = 0.7
#: Bytes of decoder activations per prompt, per channel of the image embedding and per cell
#: of its grid: the decoder keeps about 32·C·g² bytes alive per prompt in fp32 (the embedding
#: repeated per prompt, its positional copy, the two upscaling stages); 3x headroom. Too
#: large a batch is not fatal: a CUDA out-of-memory halves it (`tasks.tiles`).
_DECODER_BYTES_PER_PROMPT_CELL = 96
#: Share of free device memory the decoder may plan to use for one prompt batch.
_DECODER_MEMORY_SHARE = 0.5
#: Prompt batch on the CPU, where memory is not the limit but cache locality is (larger
#: batches measured no faster on a 2-core CPU).
_CPU_PROMPT_BATCH = 64
#: Survivors upsampled per step, (CPU, CUDA): bounds the full-resolution float buffer; on
#: the CPU small buffers also avoid fresh page-faulted allocations at every step.
_UPSAMPLE_CHUNK = (8, 64)


class FastMaskGenerator:
    """segment_anything's automatic mask generator, filtering before it upsamples.

    settings: the same AMG settings `SamAutomaticMaskGenerator` takes (`points_per_batch`
    None sizes prompt batches to the device). margin (default `settings.prefilter_margin`):
    how far below the stability threshold a candidate's low-resolution stability may be and
    still be upsampled and checked.
    """

    def __init__(
        self,
        sam: Sam,
        settings: AmgSettings,
        *,
        encoder: ImageEncoder | None = None,
        margin: float | None = None,
        synchronize: bool = False,
    ) -> None:
        self.sam = sam
        self.settings = settings
        self.encoder = encoder or ImageEncoder.shared(
            sam, precision=settings.encoder_precision, compile=settings.compile_encoder
        )
        self.device = sam.device
        self.margin = settings.prefilter_margin if margin is None else margin
        self.synchronize = synchronize
        self.point_grids = build_all_layer_point_grids(
            settings.points_per_side, settings.crop_n_layers, 1
        )
        self.timings: dict[str, float] = defaultdict(float)
        #: Masks seen per stage: decoded, past the predicted-IoU filter, upsampled, kept.
        self.counts: dict[str, int] = defaultdict(int)

    # -- public ------------------------------------------------------------------------

    def generate(self, image: NDArray[np.uint8]) -> GeneratedMasks:
        """Masks of one (H, W, 3) uint8 image."""
        return self.generate_many([image])[0]

    @torch.inference_mode()
    def generate_many(self, images: Sequence[NDArray[np.uint8]]) -> list[GeneratedMasks]:
        """Masks of several images; all their crops go through the encoder together."""
        jobs: list[tuple[int, list[int], int]] = []
        for index, image in enumerate(images):
            size = (image.shape[0], image.shape[1])
            boxes, layers = generate_crop_boxes(
                size, self.settings.crop_n_layers, _CROP_OVERLAP_RATIO
            )
            jobs.extend((index, box, layer) for box, layer in zip(boxes, layers, strict=True))
        crops = [images[i][box[1] : box[3], box[0] : box[2]] for i, box, _ in jobs]
        with self._timed("encoder"):
            inputs = [self.encoder.prepare(crop) for crop in crops]
            features = self.encoder.encode_prepared(inputs) if crops else None
        per_image: list[list[GeneratedMasks]] = [[] for _ in images]
        for j, (index, box, layer) in enumerate(jobs):
            assert features is not None
            size = (images[index].shape[0], images[index].shape[1])
            per_image[index].append(
                self._crop(features[j : j + 1], inputs[j], crops[j], box, layer, size)
            )
        return [self._combine(parts) for parts in per_image]

    def prompt_batch(self) -> int:
        """Prompts decoded at once: the setting, else as many as the device holds."""
        if self.settings.points_per_batch is not None:
            return self.settings.points_per_batch
        total = len(self.point_grids[0])
        if self.device.type != "cuda":
            return min(total, _CPU_PROMPT_BATCH)
        free, _ = torch.cuda.mem_get_info(self.device)
        channels, grid = self.sam.prompt_encoder.embed_dim, self.sam.image_encoder.img_size // 16
        per_prompt = _DECODER_BYTES_PER_PROMPT_CELL * channels * grid * grid
        return max(1, min(total, int(free * _DECODER_MEMORY_SHARE) // per_prompt))

    # -- stages ------------------------------------------------------------------------

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        started = time.perf_counter()
        yield
        if self.synchronize and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.timings[stage] += time.perf_counter() - started

    def _crop(
        self,
        features: torch.Tensor,
        prepared: torch.Tensor,
        crop: NDArray[np.uint8],
        crop_box: list[int],
        layer: int,
        image_size: tuple[int, int],
    ) -> GeneratedMasks:
        """Masks of one crop (`prepared`: its model input): decode, filter at low resolution,
        upsample survivors, NMS."""
        crop_size = (crop.shape[0], crop.shape[1])
        input_size = self.encoder.input_size(crop_size)
        maps = None
        if self.settings.prompts == "field-head" or self.settings.head_clip:
            with self._timed("field head"):
                maps = predict_field_maps(
                    self.sam,
                    self.encoder,
                    [crop],
                    features,
                    inputs=[prepared],
                    mirror=self.settings.head_mirror,
                )[0]
        with self._timed("decoder"):
            candidates = self._decode(features, crop, input_size, layer, maps)
        with self._timed("postprocess"):
            found = self._finish(candidates, crop_size, input_size, crop_box, image_size)
            if self.settings.head_clip and maps is not None:
                found = self._clipped(found, maps, crop_box, image_size)
            return found

    def _clipped(
        self,
        found: GeneratedMasks,
        maps: FieldMaps,
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> GeneratedMasks:
        """Masks cut to the field head's extent (its edges are sharper than the decoder's
        low-resolution masks); masks left empty are dropped."""
        extent = torch.zeros(image_size, dtype=torch.bool, device=self.device)
        x0, y0, x1, y1 = crop_box
        extent[y0:y1, x0:x1] = torch.as_tensor(
            maps.extent > self.settings.head_extent_thresh, device=self.device
        )
        masks = found.masks & extent
        clipped = replace(found, masks=masks, boxes=batched_mask_to_box(masks))
        return clipped.filter(masks.flatten(1).any(dim=1))

    def _decode(
        self,
        features: torch.Tensor,
        crop: NDArray[np.uint8],
        input_size: tuple[int, int],
        layer: int,
        maps: FieldMaps | None = None,
    ) -> LowResCandidates | None:
        """Candidates of the prompt grid (or of the field head's prompts, from `maps`) that may
        pass the filters; None if no prompt."""
        s = self.settings
        crop_size = (crop.shape[0], crop.shape[1])
        if s.prompts == "field-head" and maps is not None:
            points = head_prompts(maps, s, allowed=~white_pixels(crop))
        else:
            points = self.point_grids[layer] * np.array(crop_size)[None, ::-1]
        if s.skip_white_prompts:
            points = points[~on_white(crop, points)]
        # As segment_anything does (float64 from numpy), so prompts embed bit for bit alike.
        coords = torch.as_tensor(
            self.encoder.transform.apply_coords(points, crop_size), device=self.device
        )
        points_t = torch.as_tensor(points, dtype=torch.float32, device=self.device)
        image_pe = self.sam.prompt_encoder.get_dense_pe()
        kept: list[LowResCandidates] = []
        batch = self.prompt_batch()
        bf16 = s.decoder_precision == "bf16"
        for start in range(0, len(coords), batch):
            prompt = coords[start : start + batch, None, :]
            labels = torch.ones(prompt.shape[:2], dtype=torch.int, device=self.device)
            sparse, dense = self.sam.prompt_encoder(points=(prompt, labels), boxes=None, masks=None)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits, iou = self.sam.mask_decoder(
                    image_embeddings=features,
                    image_pe=image_pe,
                    sparse_prompt_embeddings=sparse,
                    dense_prompt_embeddings=dense,
                    multimask_output=True,
                )
            logits, iou = logits.flatten(0, 1).float(), iou.flatten(0, 1).float()
            # The low-resolution logits cover the padded square; the image is their top-left.
            factor = logits.shape[-1] / self.sam.image_encoder.img_size
            valid_h = math.ceil(input_size[0] * factor)
            valid_w = math.ceil(input_size[1] * factor)
            prompt_points = points_t[start : start + batch].repeat_interleave(3, dim=0)
            keep = torch.ones_like(iou, dtype=torch.bool)
            if s.pred_iou_thresh > 0.0:
                keep &= iou > s.pred_iou_thresh
            self.counts["decoded"] += len(iou)
            self.counts["candidates"] += int(keep.sum())
            if s.stability_score_thresh > 0.0:
                low_res = calculate_stability_score(
                    logits[:, :valid_h, :valid_w],
                    self.sam.mask_threshold,
                    s.stability_score_offset,
                )
                keep &= low_res >= s.stability_score_thresh - self.margin
            kept.append(LowResCandidates(logits, iou, prompt_points).filter(keep))
        return LowResCandidates.cat(kept) if kept else None

    def _finish(
        self,
        candidates: LowResCandidates | None,
        crop_size: tuple[int, int],
        input_size: tuple[int, int],
        crop_box: list[int],
        image_size: tuple[int, int],
    ) -> GeneratedMasks:
        """Upsample the candidates, keep the stable ones away from the crop's inner edges,
        NMS; the masks placed into the image."""
        s = self.settings
        if candidates is None or len(candidates) == 0:
            return GeneratedMasks.empty(image_size, self.device)
        self.counts["upsampled"] += len(candidates)
        masks, stability, kept = [], [], []
        chunk = _UPSAMPLE_CHUNK[self.device.type == "cuda"]
        for start in range(0, len(candidates), chunk):
            logits = candidates.logits[start : start + chunk, None]
            full = self._upsample(logits, input_size, crop_size)[:, 0]
            score = calculate_stability_score(
                full, self.sam.mask_threshold, s.stability_score_offset
            )
            passed = (
                score >= s.stability_score_thresh
                if s.stability_score_thresh > 0.0
                else torch.ones_like(score, dtype=torch.bool)
            )
            # Only the masks that pass are kept at full resolution, as booleans.
            masks.append(full[passed] > self.sam.mask_threshold)
            stability.append(score[passed])
            kept.append(passed)
        survivors = candidates.filter(torch.cat(kept))
        binary = torch.cat(masks)
        crop_area = box_area(torch.tensor([crop_box], dtype=torch.float32, device=self.device))
        found = GeneratedMasks(
            masks=binary,
            predicted_iou=survivors.predicted_iou,
            stability=torch.cat(stability),
            boxes=batched_mask_to_box(binary),
            points=survivors.points,
            crop_area=crop_area.expand(len(binary)),
        )
        h, w = image_size
        found = found.filter(~is_box_near_crop_edge(found.boxes, crop_box, [0, 0, w, h]))
        order = batched_nms(
            found.boxes.float(),
            found.predicted_iou,
            torch.zeros_like(found.predicted_iou, dtype=torch.long),
            s.box_nms_thresh,
        )
        self.counts["kept"] += len(order)
        return found.filter(order).uncropped(crop_box, image_size)

    def _upsample(
        self, logits: torch.Tensor, input_size: tuple[int, int], crop_size: tuple[int, int]
    ) -> torch.Tensor:
        """`Sam.postprocess_masks`, skipping its second resize when it is to the same size
        (a bilinear resize to the same size is the identity, so the values are the same)."""
        if input_size != crop_size:
            return self.sam.postprocess_masks(logits, input_size, crop_size)
        side = self.sam.image_encoder.img_size
        upsampled = F.interpolate(logits, (side, side), mode="bilinear", align_corners=False)
        return upsampled[..., : input_size[0], : input_size[1]]

    def _combine(self, parts: list[GeneratedMasks]) -> GeneratedMasks:
        """Crops of one image into its masks: NMS across crops (smaller crops win), clean-up."""
        merged = GeneratedMasks.cat(parts)
        if len(parts) > 1 and len(merged):
            order = batched_nms(
                merged.boxes.float(),
                1.0 / merged.crop_area,
                torch.zeros_like(merged.predicted_iou, dtype=torch.long),
                _CROP_NMS_THRESH,
            )
            merged = merged.filter(order)
        if self.settings.min_mask_region_area > 0 and len(merged):
            with self._timed("postprocess"):
                merged = self._remove_small_regions(merged)
        return merged

    def _remove_small_regions(self, merged: GeneratedMasks) -> GeneratedMasks:
        """segment_anything's `postprocess_small_regions` on device masks (OpenCV, CPU)."""
        area = self.settings.min_mask_region_area
        cleaned, unchanged = [], []
        for mask in merged.masks.cpu().numpy():
            mask, holes_changed = remove_small_regions(mask, area, mode="holes")
            mask, islands_changed = remove_small_regions(mask, area, mode="islands")
            cleaned.append(torch.as_tensor(mask))
            unchanged.append(float(not (holes_changed or islands_changed)))
        masks = torch.stack(cleaned).to(self.device)
        boxes = batched_mask_to_box(masks)
        order = batched_nms(
            boxes.float(),
            torch.tensor(unchanged, device=self.device),
            torch.zeros(len(boxes), dtype=torch.long, device=self.device),
            max(self.settings.box_nms_thresh, _CROP_NMS_THRESH),
        )
        return replace(merged, masks=masks, boxes=boxes).filter(order)


def on_white(image: NDArray[np.uint8], points: NDArray[np.floating]) -> NDArray[np.bool_]:
    """Which (x, y) points of `image` fall on a pure white pixel (every channel 255)."""
    cols = np.clip(points[:, 0].astype(np.int64), 0, image.shape[1] - 1)
    rows = np.clip(points[:, 1].astype(np.int64), 0, image.shape[0] - 1)
    pixels = image[rows, cols]
    return np.asarray((pixels == 255).all(axis=-1) if pixels.ndim == 2 else pixels == 255)
