"""The model card of a trained field / non-field classifier: what it saw, how it was trained,
how it scored on the crops of images it never saw."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lisegagr_core.classify.train import TrainingReport


def write_classifier_card(report: TrainingReport, data_dir: Path, path: Path) -> Path:
    """Write the card of the classifier of `report`, trained on the crop dataset `data_dir`
    (its ``dataset.json`` says where the crops came from), to `path`; return `path`."""
    dataset: dict[str, Any] = {}
    described = data_dir / "dataset.json"
    if described.is_file():
        dataset = json.loads(described.read_text(encoding="utf-8"))
    last = report.history[-1]
    settings = report.settings
    lines = [
        f"# Field / non-field classifier `{Path(report.path).name}`",
        "",
        "Step 3 of the LiSegAgr method: each instance's square crop → field or not "
        "(`lisegagr_core/classify`). Runs use it when they name no other classifier.",
        "",
        "## Data",
        "",
        f"- crops: `{data_dir}`; sources: {', '.join(map(str, dataset.get('sources', []))) or '?'}",
        f"- negatives: {dataset.get('negatives') or 'polygons labelled 0 only'}",
        f"- training crops: {report.train_counts}; held-out test crops: {report.test_counts}",
        "- split by image (no image has crops on both sides)",
        "",
        "## Training",
        "",
        f"- settings: `{json.dumps(settings, sort_keys=True)}`",
        f"- device: {report.device}; wall time {report.seconds:.0f} s",
        f"- weights sha256 (tensors): `{report.sha256}`",
        "",
        "| epoch | train loss | train acc. | test loss | test acc. | test F1 | s |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {m.epoch} | {m.train_loss:.4f} | {m.train_accuracy:.3f} | {m.test_loss:.4f} | "
        f"{m.test_accuracy:.3f} | {m.test_f1:.3f} | {m.seconds:.0f} |"
        for m in report.history
    ]
    lines += [
        "",
        f"Held out: accuracy **{last.test_accuracy:.3f}**, F1 (field positive) "
        f"**{last.test_f1:.3f}**.",
        "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
