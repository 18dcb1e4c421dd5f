"""The field / non-field classifier trained on a CPU from the agoro-naip images.

Crops of the labelled fields against connected pieces of SLIC superpixels of the unlabelled
area (forest, water, farmsteads, roads), split by image; a ResNet-18 variant is trained on the
training images' crops and scored on the crops of images held out of training, beside the
majority-class baseline.

    python bench/classifier_cpu.py [--data ../shared/data] [--crops /tmp/naip-crops] \
        [--epochs 8] [--lr 0.01] [-o bench/results/classifier_cpu.json]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch
from _machine import machine

from lisegagr_core.classify import (
    ClassifierConfig,
    SuperpixelNegatives,
    build_crop_dataset,
    evaluate_classifier,
    train_classifier,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--crops", type=Path, default=Path("/tmp/naip-crops"))
    parser.add_argument("--crop-size", type=int, default=112)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--schedule", choices=("constant", "cosine"), default="cosine")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", type=Path, default=Path("/tmp/naip-fields.pt"))
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("bench/results/classifier_cpu.json")
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    if not (args.crops / "dataset.json").is_file():
        build_crop_dataset(
            [args.data / "agoro-naip" / "annotations.json"],
            args.crops,
            SuperpixelNegatives(),
            crop_size=args.crop_size,
        )
    dataset = json.loads((args.crops / "dataset.json").read_text())
    build_seconds = time.perf_counter() - started

    config = ClassifierConfig.model_validate(
        {"backbone": args.backbone, "input_size": dataset["crop_size"]}
    )
    report = train_classifier(
        args.crops,
        args.model,
        config,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        augment=args.augment,
        device="cpu",
    )
    scores = evaluate_classifier(args.model, args.crops, device="cpu")
    result = {
        "what": "field / non-field classifier on agoro-naip crops, scored on held-out images",
        "negatives": dataset["negatives"],
        "split": {part: len(names) for part, names in dataset["images"].items()},
        "test_images": dataset["images"]["test"],
        "crops": dataset["counts"],
        "crop_size": dataset["crop_size"],
        "config": config.model_dump(mode="json"),
        "training": {**report.settings, "seconds": round(report.seconds, 1)},
        "history": [asdict(epoch) for epoch in report.history],
        "test": scores,
        "dataset_seconds": round(build_seconds, 1),
        "threads": torch.get_num_threads(),
        "machine": machine(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"test accuracy {scores['accuracy']:.3f}, F1 {scores['f1']:.3f}, "
        f"ROC AUC {scores['roc_auc']:.3f}; majority baseline "
        f"{scores['majority_baseline_accuracy']:.3f}; trained {report.seconds:.0f} s → "
        f"{args.output}"
    )


if __name__ == "__main__":
    main()
