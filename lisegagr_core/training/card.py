"""The model card of a trained model: what it is, what it saw, how well it does, its limits.

Written from the training summary (``NAME.summary.json``) and, once the model has been
evaluated, from the evaluation table, so the card never states a number no file records.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_PIPELINE_TITLES = {
    "amg": "plain AMG",
    "amg_post": "AMG + mask post-processing",
    "full": "full LiSegAgr method",
}


def write_model_card(
    summary: Mapping[str, Any], path: Path, evaluation: Mapping[str, Any] | None = None
) -> None:
    """Write the markdown card of the model that `summary` describes to `path`.

    `evaluation` is ``ModelEvaluation.to_dict()`` of the model, when it has been evaluated.
    """
    path.write_text(model_card(summary, evaluation), encoding="utf-8")
    log.info("wrote the model card %s", path)


def model_card(summary: Mapping[str, Any], evaluation: Mapping[str, Any] | None = None) -> str:
    """The markdown text of the card (see `write_model_card`)."""
    arch = summary["architecture"]
    config = summary["config"]
    data = summary["data"]
    description = data.get("description")
    provenance = f"{description} (`{data['source']}`)" if description else f"`{data['source']}`"
    lines = [
        f"# {summary['name']}: a Segment Anything model trained by lisegagr on field polygons",
        "",
        "**This is not Meta's Segment Anything model.** It has the `segment_anything` `Sam` "
        "architecture (a small windowed ViT image encoder, SAM's prompt encoder and mask "
        "decoder), but its weights were trained "
        + _origin(summary.get("initialised_from"))
        + " by this project (`lisegagr model train`) on the data below, for mapping "
        "agricultural fields only.",
        "",
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| file | `{summary['model_file']}` ({summary['size_bytes'] / 1e6:.1f} MB, "
        f"{summary['dtype']} state dict) |",
        f"| sha256 | `{summary['sha256']}` |",
        f"| parameters | {summary['parameters'] / 1e6:.1f} M |",
        f"| input size | {arch['image_size']} px |",
        f"| image encoder | ViT, embed {arch['encoder_embed_dim']}, depth {arch['encoder_depth']}, "
        f"{arch['encoder_num_heads']} heads, patch {arch['vit_patch_size']}, window "
        f"{arch['window_size']}, global attention at blocks "
        f"{', '.join(map(str, arch['encoder_global_attn_indexes']))} |",
        f"| mask decoder | {arch['prompt_embed_dim']} wide, depth {arch['decoder_depth']}, "
        f"MLP {arch['decoder_mlp_dim']}, {arch['decoder_num_heads']} heads, "
        f"{arch['num_multimask_outputs']} multimask outputs |",
        *_head_row(arch, config),
        "",
        "## Training data",
        "",
        f"{provenance}: {_count(data['train_images'], 'image')} with "
        f"{data['train_fields']} outlined fields for training; "
        f"{_count(data['validation_images'], 'image')} with {data['validation_fields']} fields "
        "held out for validation "
        f"({', '.join(data['validation_names']) or 'none'}). Images were area-downsampled to "
        f"{arch['image_size']} px (labels by nearest neighbour).",
        "",
        "## Training",
        "",
        f"{summary['steps']} steps of {config['batch_size']} images with up to "
        f"{config['field_prompts']} field points and {config['background_prompts']} ground "
        f"points each; AdamW, lr {config['lr']:g} with {config['warmup_steps']} warm-up steps "
        f"and a cosine decay, weight decay {config['weight_decay']:g}, seed {config['seed']}. "
        f"Device: {summary['device']} ({summary.get('machine', {}).get('cpu') or '?'}, "
        f"{summary.get('machine', {}).get('cpu_count') or '?'} cores); wall time "
        f"{_duration(summary['wall_seconds'])} "
        f"({summary['seconds_per_step']:.3f} s per step). Every setting is in "
        f"`{summary['name']}.summary.json`.",
        "",
        "## Validation (held-out images, one interior point per prompted field)",
        "",
        *_validation_table(summary.get("final_validation")),
        "",
        *_validation_history(summary.get("history", {}).get("validation", [])),
        "## Field segmentation quality",
        "",
        *_evaluation_section(summary["name"], evaluation),
        "",
        "## Limits",
        "",
        f"- Trained only on {description or 'the images above'}. Other sensors, resolutions, "
        "seasons and regions are untested; expect worse results there.",
        f"- Small: {summary['parameters'] / 1e6:.1f} M parameters, {summary['steps']} steps. It "
        "segments fields; it is not a general-purpose segmenter.",
        "- Its predicted IoUs and stability scores are calibrated on this data only; "
        + (
            "the AMG thresholds recorded with it in the weights manifest were tuned for it."
            if evaluation is not None
            else "no AMG thresholds have been tuned for it yet."
        ),
        "",
    ]
    return "\n".join(lines)


def _head_row(arch: Mapping[str, Any], config: Mapping[str, Any]) -> list[str]:
    """The field head's line of the model table, when the model has one."""
    width = arch.get("field_head_width", 0)
    if not width:
        return []
    return [
        f"| field head | extent, boundary and depth per pixel at {arch['image_size']} px: a "
        f"U-Net path from the image ({width} channels at full resolution) joined with the "
        f"image embedding; trained jointly (weights: prompts {config.get('prompt_weight', 1):g}"
        f", extent {config.get('extent_weight', 1):g}, boundary "
        f"{config.get('boundary_weight', 1):g}, depth {config.get('depth_weight', 1):g}; head "
        f"lr {config.get('head_lr') or config['lr']:g}) |"
    ]


def _origin(initialised_from: Mapping[str, Any] | None) -> str:
    """How the weights started: from scratch, or fine-tuned from a named model."""
    if not initialised_from:
        return "from scratch"
    return f"starting from {initialised_from['description']}"


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _validation_table(final: Mapping[str, Any] | None) -> list[str]:
    if not final:
        return ["No images were held out, so there is no validation."]
    lines = [
        f"After step {final['step']}, on {final['field_prompts']} field prompts and "
        f"{final['prompts'] - final['field_prompts']} ground prompts:",
        "",
        "| loss | mask loss | IoU-head loss | mask IoU (output ranked first) | "
        "mask IoU (best of 3) |",
        "|---|---|---|---|---|",
        f"| {final['loss']:.3f} | {final['mask_loss']:.3f} | {final['iou_loss']:.4f} | "
        f"{final['mask_iou']:.3f} | {final['best_mask_iou']:.3f} |",
    ]
    if "extent_iou" in final:
        lines += [
            "",
            f"Field head, every pixel of the held-out images: extent IoU "
            f"{final['extent_iou']:.3f}, boundary IoU {final['boundary_iou']:.3f} (head loss "
            f"{final['head_loss']:.3f}).",
        ]
    return lines


def _validation_history(rows: list[Mapping[str, Any]]) -> list[str]:
    if len(rows) < 2:
        return []
    return [
        "History:",
        "",
        "| step | loss | mask IoU (first output) | mask IoU (best of 3) | head extent IoU | "
        "head boundary IoU |",
        "|---|---|---|---|---|---|",
        *(
            f"| {row['step']} | {row['loss']:.3f} | {row['mask_iou']:.3f} | "
            f"{row['best_mask_iou']:.3f} | {_maybe(row, 'extent_iou')} | "
            f"{_maybe(row, 'boundary_iou')} |"
            for row in rows
        ),
        "",
    ]


def _maybe(row: Mapping[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "–"


def _settings_table(evaluation: Mapping[str, Any]) -> list[str]:
    """Every AMG setting tried, each pipeline's object F1 / pixel IoU (full: finalists only)."""
    lines = [
        "Every setting tried (object F1 / field-area pixel IoU; merged and split fields of the "
        "full method):",
        "",
        "| points | pred. IoU | stability | AMG | AMG + post-processing | full method | "
        "merged / split |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in evaluation["results"]:
        amg, pipelines = result["amg"], result["pipelines"]
        cells = [
            f"{pipelines[p]['f1']:.3f} / {pipelines[p]['pixel_iou']:.3f}" if p in pipelines else "–"
            for p in ("amg", "amg_post", "full")
        ]
        full = pipelines.get("full")
        merged = "–"
        if full:
            merged = f"{full.get('merged_fields', '?')} / {full.get('split_fields', '?')}"
        lines.append(
            f"| {amg['points_per_side']} | {amg['pred_iou_thresh']:g} | "
            f"{amg['stability_score_thresh']:g} | {' | '.join(cells)} | {merged} |"
        )
    return lines


def _evaluation_section(name: str, evaluation: Mapping[str, Any] | None) -> list[str]:
    if evaluation is None:
        return [f"Not evaluated yet: run `lisegagr model evaluate {name} DATA`."]
    best = evaluation["best"]
    amg = best["amg"]
    lines = [
        f"On the {len(evaluation['images'])} held-out images at a working size of "
        f"{evaluation['working_size']} px, with the AMG settings recorded for this model "
        f"(points per side {amg['points_per_side']}, predicted-IoU threshold "
        f"{amg['pred_iou_thresh']:g}, stability threshold {amg['stability_score_thresh']:g}; "
        f"best {evaluation['selected_by']} of {len(evaluation['results'])} settings tried). "
        "Object scores: one-to-one matching at IoU ≥ 0.5.",
        "",
        "| pipeline | object F1 | precision | recall | field-area pixel IoU | "
        "instances per image | true fields per image |",
        "|---|---|---|---|---|---|---|",
    ]
    for pipeline, scores in best["pipelines"].items():
        lines.append(
            f"| {_PIPELINE_TITLES.get(pipeline, pipeline)} | {scores['f1']:.3f} | "
            f"{scores['precision']:.3f} | {scores['recall']:.3f} | {scores['pixel_iou']:.3f} | "
            f"{scores['predicted_per_image']:.1f} | {scores['true_per_image']:.1f} |"
        )
    lines += ["", *_settings_table(evaluation)]
    where = evaluation["machine"]
    lines += ["", f"Measured on {where['device']} ({where.get('cpu') or 'CPU unknown'})."]
    return lines
