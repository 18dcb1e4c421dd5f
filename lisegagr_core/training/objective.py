"""What a training step computes: SAM's masks for every prompt of a batch at once, and the loss.

`decode_prompts` runs SAM's prompt encoder and mask decoder once over all prompts of all images
of a batch. ``MaskDecoder.predict_masks`` repeats one image embedding for every prompt
(``repeat_interleave``), which serves one image at a time; here each prompt instead gathers the
embedding of its own image, and the rest of ``predict_masks`` runs unchanged on SAM's modules.

`prompt_loss` is the recipe's objective: per output, 20 × sigmoid focal + dice, the minimum
over SAM's three outputs, plus the MSE between each output's predicted and true IoU; ground
prompts contribute only the IoU term, with a target of 0.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from segment_anything.modeling import Sam
from torchvision.ops import sigmoid_focal_loss

FOCAL_ALPHA = 0.25
FOCAL_GAMMA = 2.0


def decode_prompts(
    sam: Sam, image_embeddings: torch.Tensor, image_index: torch.Tensor, points: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's three multimask outputs for N single-point prompts over B images, in one pass.

    image_embeddings: (B, C, h, w) from ``sam.image_encoder``; image_index: (N,) int64, the
    image of each prompt; points: (N, 2) float, (x, y) pixels in the model's input frame, each a
    foreground click. Returns mask logits (N, 3, 4h, 4w) and predicted IoUs (N, 3), equal to
    calling ``sam.mask_decoder(..., multimask_output=True)`` image by image.
    """
    decoder = sam.mask_decoder
    labels = torch.ones(points.shape[0], 1, dtype=torch.int64, device=points.device)
    sparse, dense = sam.prompt_encoder(points=(points.unsqueeze(1), labels), boxes=None, masks=None)
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    tokens = torch.cat([output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse], dim=1)
    # index_select, not advanced indexing: its backward (index_add) is deterministic on a CPU.
    src = image_embeddings.index_select(0, image_index) + dense
    pos_src = sam.prompt_encoder.get_dense_pe().expand(src.shape[0], -1, -1, -1)
    batch, channels, height, width = src.shape

    hs, src = decoder.transformer(src, pos_src, tokens)
    iou_token_out = hs[:, 0, :]
    mask_tokens_out = hs[:, 1 : 1 + decoder.num_mask_tokens, :]
    upscaled = decoder.output_upscaling(src.transpose(1, 2).reshape(batch, channels, height, width))
    hyper_in = torch.stack(
        [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(decoder.output_hypernetworks_mlps)],
        dim=1,
    )
    batch, channels, height, width = upscaled.shape
    masks = (hyper_in @ upscaled.reshape(batch, channels, height * width)).reshape(
        batch, -1, height, width
    )
    iou_pred = decoder.iou_prediction_head(iou_token_out)
    return masks[:, 1:], iou_pred[:, 1:]


@dataclass(frozen=True)
class LossTerms:
    """Scalar tensors of one batch: `total` = `mask` + `iou`, and mask IoUs for monitoring.

    mask: mean over field prompts of the best output's 20 × focal + dice (0 without fields);
    iou: mean squared error of the predicted IoUs over all prompts and outputs; chosen_iou: mean
    true IoU of the output the IoU head ranks first; best_iou: of the best output (both over
    field prompts, NaN without fields; not differentiable).
    """

    total: torch.Tensor
    mask: torch.Tensor
    iou: torch.Tensor
    chosen_iou: torch.Tensor
    best_iou: torch.Tensor

    def detached(self) -> LossTerms:
        """The same values, cut from the autograd graph."""
        return LossTerms(*(getattr(self, item.name).detach() for item in fields(self)))


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(...,) soft dice loss of mask logits (..., h, w) against bool targets (..., h, w)."""
    probabilities = logits.sigmoid().flatten(-2)
    truth = targets.to(probabilities.dtype).flatten(-2)
    overlap = (probabilities * truth).sum(-1)
    return 1.0 - (2.0 * overlap + 1.0) / (probabilities.sum(-1) + truth.sum(-1) + 1.0)


def mask_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(...,) IoU of the masks `logits` > 0 (..., h, w) with bool targets; 0 when both empty."""
    predicted = (logits > 0).flatten(-2)
    truth = targets.flatten(-2)
    intersection = (predicted & truth).sum(-1).to(torch.float32)
    union = (predicted | truth).sum(-1).to(torch.float32)
    return intersection / union.clamp(min=1.0)


def prompt_loss(
    mask_logits: torch.Tensor,
    iou_pred: torch.Tensor,
    targets: torch.Tensor,
    is_field: torch.Tensor,
    focal_weight: float = 20.0,
) -> LossTerms:
    """The recipe's loss of N prompts.

    mask_logits: (N, K, h, w) float; iou_pred: (N, K) float; targets: (N, h, w) bool, the
    prompted field (ignored for ground prompts); is_field: (N,) bool. Computed in float32.
    """
    mask_logits, iou_pred = mask_logits.float(), iou_pred.float()
    field_logits = mask_logits[is_field]
    field_targets = targets[is_field].unsqueeze(1).expand_as(field_logits)
    with torch.no_grad():
        true_iou = torch.zeros_like(iou_pred)
        true_iou[is_field] = mask_iou(field_logits, field_targets)
    iou_term = torch.mean((iou_pred - true_iou) ** 2)
    if field_logits.shape[0] == 0:
        mask_term = mask_logits.sum() * 0.0
        undefined = torch.tensor(float("nan"), device=mask_logits.device)
        return LossTerms(iou_term + mask_term, mask_term, iou_term, undefined, undefined)
    focal = sigmoid_focal_loss(
        field_logits,
        field_targets.to(field_logits.dtype),
        alpha=FOCAL_ALPHA,
        gamma=FOCAL_GAMMA,
        reduction="none",
    ).mean(dim=(-2, -1))
    per_output = focal_weight * focal + dice_loss(field_logits, field_targets)
    mask_term = per_output.min(dim=1).values.mean()
    field_true_iou = true_iou[is_field]
    chosen = field_true_iou.gather(1, iou_pred[is_field].argmax(dim=1, keepdim=True))
    return LossTerms(
        total=mask_term + iou_term,
        mask=mask_term,
        iou=iou_term,
        chosen_iou=chosen.mean(),
        best_iou=field_true_iou.max(dim=1).values.mean(),
    )
