"""Seconds per training step of the project's SAM on this machine, for one architecture and batch.

Real NAIP images (../shared/data/agoro-naip, or $LISEGAGR_SHARED_DATA/agoro-naip) at the model's
input size; each step is the training's own `train_step` (augmentation, prompts, encoder, one
batched decoder pass, loss, AdamW). The first step is reported apart (allocation warm-up).
Results are merged into the JSON file under `--label`.

    python bench/training_step.py --arch fields-512 --batch-size 16 --steps 3 --label recipe
    python bench/training_step.py --arch fields-256-cpu --batch-size 8 --field-prompts 16 \
        --background-prompts 4 --steps 5 --label cpu
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import torch
from _machine import machine

from lisegagr_core.devices import resolve_device
from lisegagr_core.training import (
    TrainConfig,
    find_annotated_images,
    initial_model,
    read_scene,
    stack_training_images,
    to_training_image,
    train_step,
)

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="fields-512")
    parser.add_argument("--input-size", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--field-prompts", type=int, default=24)
    parser.add_argument("--background-prompts", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--label", default=None)
    parser.add_argument(
        "-o", "--output", type=Path, default=REPO / "bench/results/training_step.json"
    )
    args = parser.parse_args()

    config = TrainConfig(
        architecture=args.arch,
        input_size=args.input_size,
        batch_size=args.batch_size,
        field_prompts=args.field_prompts,
        background_prompts=args.background_prompts,
        device=args.device,
    )
    arch = config.sam_architecture()
    device = resolve_device(config.device)
    data = Path(os.environ.get("LISEGAGR_SHARED_DATA", REPO.parent / "shared/data"))
    sources = find_annotated_images(data / "agoro-naip")[: config.batch_size]
    images = [to_training_image(read_scene(source), arch.image_size) for source in sources]
    rgb, labels = stack_training_images(images, device)

    load_before = os.getloadavg()[0]
    sam = initial_model(arch, config.seed).to(device).train()
    optimizer = torch.optim.AdamW(sam.parameters(), lr=config.lr)
    seconds = []
    for step in range(args.steps):
        started = time.perf_counter()
        train_step(sam, optimizer, rgb, labels, config, step + config.warmup_steps)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
        print(f"step {step + 1}: {seconds[-1]:.2f} s", flush=True)
    timed = seconds[1:] or seconds
    record = {
        "architecture": args.arch,
        "input_size": arch.image_size,
        "parameters": sum(p.numel() for p in sam.parameters()),
        "batch_size": config.batch_size,
        "field_prompts_per_image": config.field_prompts,
        "background_prompts_per_image": config.background_prompts,
        "threads": torch.get_num_threads(),
        "first_step_s": round(seconds[0], 3),
        "seconds_per_step": round(sum(timed) / len(timed), 3),
        "steps_timed": len(timed),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": machine(),
    }
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    results[args.label or f"{args.arch}-{arch.image_size}px-batch{config.batch_size}"] = record
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
