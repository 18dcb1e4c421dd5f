"""Per-tile cost of the whole method, segment_anything's generator against the fast path.

One run measures, on the same device and the same tiles, for each SAM size:

- ``vanilla``: `SamAutomaticMaskGenerator` (fp32, segment_anything's attention, prompt
  batches of 64, RLE per mask), called as the method needs it;
- ``fast``: `FastMaskGenerator` (fused attention, bf16 encoder on CUDA, device-sized prompt
  batches, filtering on low-resolution logits, masks kept on the device), one tile at a time;
- ``fast_batched``: the same with all tiles in lockstep (`segment_images`), so rounds and
  refinement crops of several tiles share encoder calls;
- ``fast_bf16_decoder`` (CUDA by default): the fast path with the mask decoder in bf16.

Each tile runs the whole method: 4 rounds forced (``min_unsegmented_fraction`` 0, so no
tile stops early), refinement forced to the 4 largest masks of each tile (the paper's
edge-ratio and entropy tests flag none on synthetic tiles; ``--refine-crops -1`` lets them
decide), the final partition, and the field classifier (ResNet-50, random weights) on its
instances. Stages are timed with forward hooks and synchronised on
CUDA: encoder, decoder (prompt encoder + mask decoder), AMG post-processing (the rest of
mask generation), whitening, refinement analysis (edge ratio and entropy of candidates),
mask arithmetic (merging, de-duplication, partition) and classification.

Realistic masks: SAM weights here are random (no Meta weights on these machines), and
random weights let almost no mask through AMG's filters, which would make post-processing
look free. `lisegagr_core.standins.oracle` hooks the model so its mask decoder, after running
for real, answers with the image's colour segments (Felzenszwalb) at varying sharpness and
predicted IoU: tens of masks per pass survive, as with a trained SAM on farmland. Its own
time is measured and subtracted. The two generators see the same answers, so their
partitions must agree, which the result records.

    python bench/gpu_tile.py                       # CUDA: vit_b, vit_l, vit_h
    python bench/gpu_tile.py --models tiny-1024 vit_b --tiles 1   # what a CPU can afford
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _machine import machine
from numpy.typing import NDArray

import lisegagr_core.engine as engine_module
import lisegagr_core.refine as refine_module
from lisegagr_core.architectures import ARCHITECTURES, TINY
from lisegagr_core.classify.crops import classify_instances
from lisegagr_core.classify.model import ClassifierConfig, FieldClassifier
from lisegagr_core.config import AmgSettings, EngineConfig, RoundSettings
from lisegagr_core.engine import Segmentation, segment_images
from lisegagr_core.models import LoadedSam, build_sam
from lisegagr_core.sources import SamMaskSource
from lisegagr_core.standins.farmland import make_farmland_scene
from lisegagr_core.standins.oracle import SegmentOracle, install_segment_oracle

MODELS = {**ARCHITECTURES, "tiny-1024": dataclasses.replace(TINY, image_size=1024)}
SAM_STAGES = ("encoder", "decoder", "amg_postprocess")


class StageClock:
    """Seconds per stage, from forward hooks on the model and wrappers around engine steps."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = defaultdict(float)
        self._started: dict[str, float] = {}

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def start(self, stage: str) -> None:
        self.sync()
        self._started[stage] = time.perf_counter()

    def stop(self, stage: str) -> None:
        self.sync()
        self.seconds[stage] += time.perf_counter() - self._started.pop(stage)

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        self.start(stage)
        try:
            yield
        finally:
            self.stop(stage)

    def stages(self, oracle_seconds: float = 0.0) -> dict[str, float]:
        """The method's stages from the clock's readings (the oracle's own time taken out)."""
        s = self.seconds
        sam = s["sam_total"] - oracle_seconds
        return {
            "encoder": s["encoder"],
            "decoder": s["decoder"],
            "amg_postprocess": sam - s["encoder"] - s["decoder"],
            "whitening": s["whitening"],
            "refinement_analysis": s["refinement_analysis"],
            "mask_arithmetic": s["method"]
            - s["sam_total"]
            - s["whitening"]
            - s["refinement_analysis"],
            "classification": s["classification"],
        }

    def hook_model(self, sam: torch.nn.Module) -> list[Any]:
        """Encoder: patch embedding in → neck out; decoder: prompt encoder in → decoder out.

        The end hooks run before the oracle's (prepend), so its answer is not counted here.
        """
        encoder = sam.image_encoder  # type: ignore[union-attr]
        return [
            encoder.patch_embed.register_forward_pre_hook(lambda *_: self.start("encoder")),
            encoder.neck.register_forward_hook(lambda *_: self.stop("encoder"), prepend=True),
            sam.prompt_encoder.register_forward_pre_hook(  # type: ignore[union-attr]
                lambda *_: self.start("decoder")
            ),
            sam.mask_decoder.register_forward_hook(  # type: ignore[union-attr]
                lambda *_: self.stop("decoder"), prepend=True
            ),
        ]


@contextmanager
def wrapped(
    module: Any,
    name: str,
    clock: StageClock,
    stage: str,
    then: Callable[..., Any] | None = None,
) -> Iterator[None]:
    """Time every call of `module.name` (an engine step looked up at call time); `then`
    may replace its result, given the result and the call's arguments."""
    original: Callable[..., Any] = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        with clock.timed(stage):
            result = original(*args, **kwargs)
        return result if then is None else then(result, *args, **kwargs)

    setattr(module, name, timed)
    try:
        yield
    finally:
        setattr(module, name, original)


class TimedSource(SamMaskSource):
    """A SAM source that also counts its passes and the time of its calls."""

    def __init__(self, sam: LoadedSam, settings: AmgSettings, clock: StageClock) -> None:
        super().__init__(sam, settings)
        self.clock = clock
        self.passes = 0

    def generate_many(self, images, regions):  # type: ignore[no-untyped-def]
        self.passes += len(images)
        with self.clock.timed("sam_total"):
            return super().generate_many(images, regions)


def tiles(count: int, size: int) -> list[NDArray[np.uint8]]:
    """Synthetic NAIP-like farmland tiles (about 60 fields each at 1024²)."""
    return [make_farmland_scene(size, seed=100 + i).rgb for i in range(count)]


def method_config(amg: AmgSettings) -> EngineConfig:
    """The paper's method with every round forced, so both sides do the same passes."""
    return EngineConfig(
        amg=amg, working_size=None, rounds=RoundSettings(min_unsegmented_fraction=0.0)
    )


def largest_candidates(count: int | None) -> Callable[..., Any] | None:
    """Refinement forced to the `count` largest candidate masks of each tile (None: the
    paper's edge-ratio and entropy tests decide, which flag none on synthetic tiles)."""
    if count is None:
        return None

    def choose(_flagged: Any, _image: Any, masks: Any, settings: Any) -> NDArray[np.int64]:
        candidates = np.flatnonzero(masks.areas > settings.min_area)
        largest = candidates[np.argsort(-masks.areas[candidates], kind="stable")]
        return largest[:count].astype(np.int64)

    return choose


def run_side(
    loaded: LoadedSam,
    oracle: SegmentOracle,
    amg: AmgSettings,
    images: Sequence[NDArray[np.uint8]],
    classifier: FieldClassifier,
    batched: bool,
    refine_crops: int | None,
) -> tuple[dict[str, Any], list[Segmentation]]:
    clock = StageClock(loaded.device)
    source = TimedSource(loaded, amg, clock)
    config = method_config(amg)
    hooks = clock.hook_model(loaded.model)
    oracle.seconds = 0.0
    results: list[Segmentation] = []
    try:
        with (
            wrapped(engine_module, "whiten", clock, "whitening"),
            wrapped(
                refine_module,
                "find_under_segmented",
                clock,
                "refinement_analysis",
                then=largest_candidates(refine_crops),
            ),
        ):
            clock.start("total")
            groups = [list(images)] if batched else [[image] for image in images]
            for group in groups:
                with clock.timed("method"):
                    results.extend(segment_images(group, source, config))
                for image, result in zip(group, results[-len(group) :], strict=True):
                    with clock.timed("classification"):
                        classify_instances(image, result.labels, classifier)
            clock.stop("total")
    finally:
        for hook in hooks:
            hook.remove()
    s = clock.seconds
    stages = clock.stages(oracle_seconds=oracle.seconds)
    n = len(images)
    side = {
        "per_tile_seconds": round((s["total"] - oracle.seconds) / n, 3),
        "stages_per_tile_seconds": {k: round(v / n, 3) for k, v in stages.items()},
        "sam_passes_per_tile": source.passes / n,
        "rounds_per_tile": float(np.mean([len(r.rounds) for r in results])),
        "refinement_crops_per_tile": float(
            np.mean([r.refinement.under_segmented if r.refinement else 0 for r in results])
        ),
        "masks_per_pass": round(
            sum(sum(x.proposed for x in r.rounds) for r in results)
            / max(sum(len(r.rounds) for r in results), 1),
            1,
        ),
        "fields_per_tile": float(np.mean([len(r.instances) for r in results])),
        "oracle_seconds_subtracted_per_tile": round(oracle.seconds / n, 3),
    }
    return side, results


def agreement(a: Sequence[Segmentation], b: Sequence[Segmentation]) -> float:
    """Share of pixels whose instance label is the same in both partitions."""
    same = sum(int((x.labels == y.labels).sum()) for x, y in zip(a, b, strict=True))
    return round(same / sum(x.labels.size for x in a), 5)


def bench_model(
    name: str,
    device: torch.device,
    images: Sequence[NDArray[np.uint8]],
    classifier: FieldClassifier,
    args: argparse.Namespace,
) -> dict[str, Any]:
    arch = MODELS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_sam(arch).to(device)
    oracle = install_segment_oracle(model)
    loaded = LoadedSam(name, model, device, "random", arch, {}, "random")
    base = AmgSettings(points_per_side=args.points_per_side)
    vanilla_amg = base.model_copy(update={"generator": "segment-anything"})
    fast_amg = base.model_copy(update={"compile_encoder": args.compile})
    warm = [images[0][:256, :256].copy()]
    for amg in (vanilla_amg, fast_amg):  # warm-up (kernels, allocator, cuDNN), a small grid
        small = amg.model_copy(update={"points_per_side": 4})
        run_side(loaded, oracle, small, warm, classifier, False, args.refine_crops)
    vanilla, vanilla_results = run_side(
        loaded, oracle, vanilla_amg, images, classifier, False, args.refine_crops
    )
    fast, fast_results = run_side(
        loaded, oracle, fast_amg, images, classifier, False, args.refine_crops
    )
    result: dict[str, Any] = {"vanilla": vanilla, "fast": fast}
    if args.bf16_decoder:
        bf16_amg = fast_amg.model_copy(update={"decoder_precision": "bf16"})
        bf16, bf16_results = run_side(
            loaded, oracle, bf16_amg, images, classifier, False, args.refine_crops
        )
        result["fast_bf16_decoder"] = bf16
        result["fast_bf16_decoder_vs_vanilla_pixel_agreement"] = agreement(
            vanilla_results, bf16_results
        )
    if len(images) > 1 and not args.no_batched:
        batched, batched_results = run_side(
            loaded, oracle, fast_amg, images, classifier, True, args.refine_crops
        )
        result["fast_batched"] = batched
        result["fast_batched_vs_fast_pixel_agreement"] = agreement(fast_results, batched_results)
    result["speedup_per_tile"] = round(vanilla["per_tile_seconds"] / fast["per_tile_seconds"], 1)
    result["fast_vs_vanilla_pixel_agreement"] = agreement(vanilla_results, fast_results)
    print(name, json.dumps(result, indent=1), flush=True)
    del model, loaded
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument(
        "--models",
        nargs="+",
        choices=sorted(MODELS),
        default=["vit_b", "vit_l", "vit_h"] if cuda else ["tiny-1024", "vit_b"],
    )
    parser.add_argument("--tiles", type=int, default=4 if cuda else 1)
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--compile", action="store_true", help="torch.compile the encoder")
    parser.add_argument(
        "--refine-crops",
        type=int,
        default=4,
        help="refine this many of each tile's largest masks (-1: the paper's tests decide)",
    )
    parser.add_argument("--no-batched", action="store_true")
    parser.add_argument(
        "--bf16-decoder",
        action=argparse.BooleanOptionalAction,
        default=cuda,
        help="also measure the fast path with the mask decoder in bf16 (default on CUDA)",
    )
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()

    if args.refine_crops < 0:
        args.refine_crops = None
    device = torch.device(args.device)
    images = tiles(args.tiles, args.tile_size)
    classifier = FieldClassifier(ClassifierConfig()).to(device).eval()
    result: dict[str, Any] = {
        "benchmark": "one tile through the whole method: segment_anything's AMG vs fast path",
        "machine": machine(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "tiles": {"count": args.tiles, "size": [args.tile_size, args.tile_size]},
        "settings": {
            "points_per_side": args.points_per_side,
            "rounds": "4, forced (min_unsegmented_fraction 0)",
            "refinement": (
                "the paper's edge-ratio and entropy tests"
                if args.refine_crops is None
                else f"forced: the {args.refine_crops} largest masks over 10,000 px of each tile"
            ),
            "classifier": "ResNet-50 + hue attention, random weights, 224 px crops",
            "fast_encoder": "bf16 autocast on CUDA, fp32 on CPU; fused attention"
            + ("; torch.compile" if args.compile else ""),
            "weights": "random (no Meta weights here); masks from lisegagr_core.standins.oracle",
        },
        "models": {},
    }
    label = "gpu" if device.type == "cuda" else "cpu"
    output = args.output or Path(f"bench/results/gpu_tile_{label}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    for name in args.models:  # written after each model: a long run keeps what it measured
        result["models"][name] = bench_model(name, device, images, classifier, args)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {output} ({name})", flush=True)


if __name__ == "__main__":
    main()
