"""The whole method with the shipped default model and classifier, on held-out NAIP images.

For each image held out of the default model's training (its summary names them; the
classifier's crop split holds out the same images): the full method (rounds, refinement,
partition) with the settings recorded for the model, then every instance classified. An
instance's true class is "field" when at least half of its pixels lie in outlined fields,
else "non-field" (forest, water, farmsteads, roads are not outlined). Reported: the
classifier's agreement with those classes (accuracy, confusion), and the segmentation's
scores before and after dropping the instances classified non-field.

    python bench/pipeline_classes.py [--working-size 512] [-o bench/results/pipeline_classes.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine

from lisegagr_core.classify.crops import classify_instances
from lisegagr_core.classify.model import load_classifier
from lisegagr_core.config import load_config
from lisegagr_core.engine import segment_image
from lisegagr_core.imagery import resize_labels, resize_to_working_size
from lisegagr_core.metrics import score_partition
from lisegagr_core.models import load_sam, model_description
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.training import load_scenes, summary_path_of
from lisegagr_core.training.evaluation import PipelineScores
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest, default_classifier

SHARED = Path(os.environ.get("LISEGAGR_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--working-size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("bench/results/pipeline_classes.json")
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    manifest = Manifest.load(DEFAULT_WEIGHTS_DIR / "manifest.json")
    sam = load_sam(manifest.default, device="cpu")
    classifier_path = default_classifier(DEFAULT_WEIGHTS_DIR, manifest)
    if classifier_path is None:
        raise SystemExit("no default classifier in weights/manifest.json")
    classifier, header = load_classifier(classifier_path, device="cpu")
    spec = manifest.entries[manifest.default]
    summary = json.loads(summary_path_of(DEFAULT_WEIGHTS_DIR / spec.filename).read_text())
    scenes = load_scenes(SHARED / "agoro-naip", summary["data"]["validation_names"])
    config = load_config(
        None, {"working_size": args.working_size}, model_settings=sam.engine_settings
    )
    source = SamMaskSource(sam, config.amg)

    confusion = {"field": {"field": 0, "non-field": 0}, "non-field": {"field": 0, "non-field": 0}}
    all_scores, kept_scores, per_image = [], [], []
    started = time.perf_counter()
    for scene in scenes:
        image, _ = resize_to_working_size(scene.rgb, config.working_size)
        truth = resize_labels(scene.instances, image.shape[:2])
        labels = segment_image(image, source, config).labels
        scores = classify_instances(image, labels, classifier)
        field_ids = {i for i, score in scores.items() if score >= 0.5}
        for instance, score in scores.items():
            inside = truth[labels == instance] > 0
            true_class = "field" if inside.mean() >= 0.5 else "non-field"
            confusion[true_class]["field" if score >= 0.5 else "non-field"] += 1
        kept = np.where(np.isin(labels, list(field_ids)), labels, 0)
        everything, only_fields = score_partition(truth, labels), score_partition(truth, kept)
        all_scores.append(everything)
        kept_scores.append(only_fields)
        per_image.append(
            {
                "image": scene.name,
                "instances": len(scores),
                "classified_field": len(field_ids),
                "all_instances": everything.to_dict(),
                "field_instances": only_fields.to_dict(),
            }
        )
        print(scene.name, per_image[-1]["instances"], len(field_ids), flush=True)
    seconds = time.perf_counter() - started
    total = sum(sum(row.values()) for row in confusion.values())
    correct = confusion["field"]["field"] + confusion["non-field"]["non-field"]
    record: dict[str, Any] = {
        "what": "full method + default classifier on the default model's held-out NAIP images",
        "model": model_description(sam),
        "amg_settings": sam.settings,
        "classifier": {"file": classifier_path.name, "sha256": header["sha256"]},
        "working_size": config.working_size,
        "instances": total,
        "class_agreement": round(correct / total, 4) if total else None,
        "confusion_true_by_predicted": confusion,
        "segmentation_all_instances": PipelineScores.pooled(all_scores, seconds).__dict__,
        "segmentation_field_instances_only": PipelineScores.pooled(kept_scores, seconds).__dict__,
        "images": per_image,
        "seconds": round(seconds, 1),
        "machine": machine(),
    }
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps({k: record[k] for k in ("class_agreement", "confusion_true_by_predicted")}))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
