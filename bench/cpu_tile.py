"""One 1024² tile through the whole method on a CPU, with a trained model: where the time goes.

Unlike `gpu_tile.py` (random weights answered by a segment oracle, rounds and refinement
forced), this runs the shipped default model (or `--model`) as a user's run does: the method's
own stop rule and refinement tests, the masks the model really makes, the default classifier
when one is shipped (else a ResNet-18 with random weights, which costs the same). The tile is
a held-out NAIP image from the shared data (never one the model trained on), or a generated
farmland tile when the shared data is absent. Stages are timed with the same clock as
`gpu_tile.py`: encoder, decoder (prompt encoder + mask decoder), AMG post-processing, whitening,
refinement analysis, mask arithmetic and classification. Each setting runs `--repeats` times
after a warm-up; the fastest repeat is recorded (the machine is shared).

    python bench/cpu_tile.py                                  # default model, 16 and 32 points
    python bench/cpu_tile.py --points-per-side 16 --threads 2
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
from gpu_tile import StageClock, TimedSource, wrapped
from numpy.typing import NDArray

import lisegagr_core.engine as engine_module
import lisegagr_core.refine as refine_module
from lisegagr_core.classify.crops import classify_instances
from lisegagr_core.classify.model import ClassifierConfig, FieldClassifier, load_classifier
from lisegagr_core.config import EngineConfig, load_config
from lisegagr_core.engine import segment_images
from lisegagr_core.metrics import score_partition
from lisegagr_core.models import LoadedSam, load_sam, model_description
from lisegagr_core.standins.farmland import make_farmland_scene
from lisegagr_core.training import load_scenes, summary_path_of
from lisegagr_core.weights import DEFAULT_MANIFEST_PATH, Manifest, default_classifier

SHARED = Path(os.environ.get("LISEGAGR_SHARED_DATA", Path(__file__).parents[2] / "shared/data"))


def held_out_tile(
    model: str, weights: Path, size: int
) -> tuple[NDArray[np.uint8], NDArray[np.uint32], str]:
    """A held-out NAIP image of `model`'s training (its summary names them) and its fields,
    else a synthetic farmland tile and its fields."""
    manifest = Manifest.load(weights / "manifest.json")
    spec = manifest.entries.get(model)
    if spec is not None and (SHARED / "agoro-naip").is_dir():
        summary = summary_path_of(weights / spec.filename)
        if summary.is_file():
            name = json.loads(summary.read_text())["data"]["validation_names"][0]
            [scene] = load_scenes(SHARED / "agoro-naip", [name])
            rgb = np.ascontiguousarray(scene.rgb[:size, :size])
            return rgb, scene.instances[:size, :size], f"agoro-naip/{name} (held out of training)"
    scene = make_farmland_scene(size, seed=100)
    return scene.rgb, scene.instances, "synthetic farmland (seed 100)"


def one_pass(
    loaded: LoadedSam,
    config: EngineConfig,
    image: NDArray[np.uint8],
    classifier: FieldClassifier,
) -> tuple[dict[str, Any], NDArray[np.uint32]]:
    clock = StageClock(loaded.device)
    source = TimedSource(loaded, config.amg, clock)
    hooks = clock.hook_model(loaded.model)
    try:
        with (
            wrapped(engine_module, "whiten", clock, "whitening"),
            wrapped(refine_module, "find_under_segmented", clock, "refinement_analysis"),
        ):
            clock.start("total")
            with clock.timed("method"):
                [result] = segment_images([image], source, config)
            with clock.timed("classification"):
                classify_instances(image, result.labels, classifier)
            clock.stop("total")
    finally:
        for hook in hooks:
            hook.remove()
    s = clock.seconds
    stages = clock.stages()
    return {
        "seconds": round(s["total"], 3),
        "stages_seconds": {k: round(v, 3) for k, v in stages.items()},
        "sam_passes": source.passes,
        "rounds": len(result.rounds),
        "refinement_crops": result.refinement.under_segmented if result.refinement else 0,
        "fields": len(result.instances),
    }, result.labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=None, help="default: the manifest's default model")
    parser.add_argument("--classifier", default=None, help="default: the shipped classifier")
    parser.add_argument("--weights-dir", type=Path, default=DEFAULT_MANIFEST_PATH.parent)
    parser.add_argument("--points-per-side", type=int, nargs="*", default=[16, 32])
    parser.add_argument(
        "--recorded",
        action="store_true",
        help="also time the settings recorded with the model, unchanged (for a model whose "
        "default is not a point grid, e.g. the field head's instances)",
    )
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("bench/results/cpu_tile.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    manifest = Manifest.load(args.weights_dir / "manifest.json")
    model = args.model or manifest.default
    loaded = load_sam(model, weights_dir=args.weights_dir, manifest=manifest, device="cpu")
    image, truth, tile = held_out_tile(model, args.weights_dir, args.tile_size)
    classifier_path = args.classifier or default_classifier(args.weights_dir, manifest)
    if classifier_path is not None:
        classifier, _ = load_classifier(classifier_path, device="cpu")
        classifier_name = str(classifier_path)
    else:
        classifier = FieldClassifier(ClassifierConfig(backbone="resnet18"))
        classifier_name = "ResNet-18, random weights (no classifier shipped)"

    results: dict[str, Any] = {}
    small = load_config(None, {"working_size": None, "amg.points_per_side": 4})
    one_pass(loaded, small, image[:256, :256].copy(), classifier)  # warm-up
    if args.recorded:
        config = load_config(None, {"working_size": None}, model_settings=loaded.engine_settings)
        runs = [one_pass(loaded, config, image, classifier) for _ in range(args.repeats)]
        best = min(runs, key=lambda run: run[0]["seconds"])[0]
        best["all_seconds"] = [run[0]["seconds"] for run in runs]
        best["scores"] = score_partition(truth, runs[0][1]).to_dict()
        best["settings"] = loaded.engine_settings
        results["recorded_settings"] = best
        print("recorded_settings", json.dumps(best), flush=True)
    for points in args.points_per_side:
        labels_of: dict[bool, NDArray[np.uint32]] = {}
        for skip in (False, True):
            config = load_config(
                None,
                {
                    "working_size": None,
                    "amg.points_per_side": points,
                    "amg.skip_white_prompts": skip,
                },
                model_settings=loaded.engine_settings,
            )
            runs = [one_pass(loaded, config, image, classifier) for _ in range(args.repeats)]
            best = min(runs, key=lambda run: run[0]["seconds"])[0]
            labels_of[skip] = runs[0][1]
            best["all_seconds"] = [run[0]["seconds"] for run in runs]
            best["scores"] = score_partition(truth, labels_of[skip]).to_dict()
            key = f"points_per_side_{points}" + ("_skip_white_prompts" if skip else "")
            results[key] = best
            print(key, json.dumps(best), flush=True)
        # The partition with every prompt decoded as the truth: how much skipping changes.
        change = score_partition(labels_of[False], labels_of[True])
        results[f"points_per_side_{points}_skip_white_prompts"]["versus_every_prompt"] = {
            "instance_f1": round(change.f1, 4),
            "field_area_iou": round(change.pixel_iou, 4),
        }

    record = {
        "what": "one tile through the whole LiSegAgr method (rounds by the stop rule, "
        "refinement by the paper's tests, partition, classification) on a CPU",
        "model": model_description(loaded),
        "amg_settings_recorded_with_model": loaded.settings,
        "classifier": classifier_name,
        "tile": tile,
        "tile_size": list(image.shape[:2]),
        "threads": args.threads,
        "load_average_at_end": list(os.getloadavg()),
        "machine": machine(),
        "results": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
