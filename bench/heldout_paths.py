"""A model on its held-out NAIP images through both user paths, `segment` and `run`, per variant.

The held-out images are those the model's training summary names as validation (never trained
on); each variant is a set of dotted engine overrides (JSON) over the model's recorded
settings. The region run uses the in-process executor (the same pipeline as the Prefect flow,
which a test holds to the same map), with the default classifier unless `--no-classifier`, so
the field-class-only scores are reported too. Writes bench/results/heldout_paths_<model>.json.

    python bench/heldout_paths.py --model lisegagr-fields-v3 \
        --variant grid='{"amg.prompts": "grid"}' --variant head='{"amg.generator": "field-head"}'
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from _machine import machine

from lisegagr_core.models import load_sam
from lisegagr_core.training import summary_path_of
from lisegagr_core.training.data import find_annotated_images
from lisegagr_core.training.paths import PATHS, PathResult, paths_table, score_paths
from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR, Manifest, default_classifier

SHARED = Path(os.environ.get("LISEGAGR_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def held_out_names(model: str, weights: Path) -> list[str]:
    spec = Manifest.load(weights / "manifest.json").entries.get(model)
    path = weights / spec.filename if spec is not None else Path(model)
    summary = json.loads(summary_path_of(path).read_text(encoding="utf-8"))
    names: list[str] = summary["data"]["validation_names"]
    return names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="name or .pt path (default: the default)")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS_DIR)
    parser.add_argument("--data", type=Path, default=SHARED / "agoro-naip")
    parser.add_argument("--variant", action="append", default=[], help="NAME=JSON overrides")
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--images", type=int, default=None, help="only the first N held out")
    parser.add_argument("--no-classifier", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", type=Path, default=Path("out/heldout"))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    manifest = Manifest.load(args.weights / "manifest.json")
    model = args.model or manifest.default
    sam = load_sam(model, weights_dir=args.weights, device="cpu")
    names = held_out_names(model, args.weights)[: args.images]
    sources = [s for s in find_annotated_images(args.data) if s.name in names]
    variants: dict[str, dict[str, Any]] = {}
    for item in args.variant or ["default={}"]:
        name, _, raw = item.partition("=")
        variants[name] = json.loads(raw or "{}")
    classifier = None
    if not args.no_classifier:
        found = default_classifier(args.weights)
        classifier = str(found) if found is not None else None
    output = args.output or Path("bench/results") / f"heldout_paths_{Path(model).stem}.json"
    results: list[PathResult] = []

    def save(result: PathResult) -> None:
        results.append(result)
        s = result.scores
        print(
            f"{result.variant:>14} {result.path:>18}: F1 {s.f1:.3f} (P {s.precision:.3f} "
            f"R {s.recall:.3f}) pixel IoU {s.pixel_iou:.3f} merged {s.merged_fields} "
            f"split {s.split_fields} instances/image {result.instances_per_image} "
            f"s/image {result.seconds_per_image}",
            flush=True,
        )
        table = paths_table(sam, results, names)
        table["bench_machine"] = machine()
        table["threads"] = torch.get_num_threads()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")

    started = time.perf_counter()
    score_paths(
        sam,
        sources,
        variants,
        workdir=args.workdir,
        paths=args.paths.split(","),
        classifier=classifier,
        weights_dir=args.weights,
        on_result=save,
    )
    print(f"{output} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
