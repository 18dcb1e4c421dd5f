"""Do the conformance tests guard the method? Apply single-line changes, see which are caught.

Each mutation replaces one line of the engine's source (a default threshold, a comparison, a
step) in a copy of `lisegagr_core`, and runs `tests/test_method_conformance.py` against that
copy. A mutation is caught when a test fails; it is also reported whether a test other
than the one that pins the defaults to the paper's values failed, so that a default change
is seen to be caught by a test of behaviour, not only by the pin.

    python bench/method_mutations.py            # → bench/results/method_mutations.json

The first group is the list of issue 14; the second are this project's own fidelity fixes
(edge erasing round, grey conversion, connectivity, dilation shape, ...) turned back.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TESTS = "tests/test_method_conformance.py"
PIN_TEST = "test_defaults_are_the_papers_values"


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str


ISSUE_14 = [
    Mutation(
        "stop threshold 0.05 → 0.3",
        "lisegagr_core/config.py",
        "min_unsegmented_fraction: float = Field(0.05,",
        "min_unsegmented_fraction: float = Field(0.3,",
    ),
    Mutation(
        "round-2 white drop 0.5 → 0.9",
        "lisegagr_core/config.py",
        "round2_white_drop: float = Field(0.5,",
        "round2_white_drop: float = Field(0.9,",
    ),
    Mutation(
        "later white drop 0.9 → 0.5",
        "lisegagr_core/config.py",
        "later_white_drop: float = Field(0.9,",
        "later_white_drop: float = Field(0.5,",
    ),
    Mutation(
        "merge IoU 0.8 → 0.5",
        "lisegagr_core/config.py",
        "merge_iou: float = Field(0.8,",
        "merge_iou: float = Field(0.5,",
    ),
    Mutation(
        "refinement area > → ≥",
        "lisegagr_core/refine.py",
        "np.flatnonzero(masks.areas > settings.min_area)",
        "np.flatnonzero(masks.areas >= settings.min_area)",
    ),
    Mutation(
        "refinement area 10,000 → 30,000",
        "lisegagr_core/config.py",
        "min_area: int = Field(10_000,",
        "min_area: int = Field(30_000,",
    ),
    Mutation(
        "entropy 6.0 → 4.0",
        "lisegagr_core/config.py",
        "entropy_thresh: float = Field(6.0,",
        "entropy_thresh: float = Field(4.0,",
    ),
    Mutation(
        "edge ratio 0.4 → 0.2",
        "lisegagr_core/config.py",
        "edge_ratio_thresh: float = Field(0.4,",
        "edge_ratio_thresh: float = Field(0.2,",
    ),
    Mutation(
        "refined de-dup 0.9 → 0.3",
        "lisegagr_core/config.py",
        "refined_dedup_iou: float = Field(0.9,",
        "refined_dedup_iou: float = Field(0.3,",
    ),
    Mutation(
        "final de-dup 0.6 → 0.95",
        "lisegagr_core/config.py",
        "final_dedup_iou: float = Field(0.6,",
        "final_dedup_iou: float = Field(0.95,",
    ),
    Mutation(
        "dilation 3 → 0",
        "lisegagr_core/config.py",
        "mask_dilation_px: int = Field(3,",
        "mask_dilation_px: int = Field(0,",
    ),
    Mutation(
        "white-drop filter removed",
        "lisegagr_core/engine.py",
        "kept = proposed.select(on_white < _white_drop(each[i], round_number))",
        "kept = proposed",
    ),
    Mutation(
        "minimum component 50 → 200",
        "lisegagr_core/config.py",
        "min_component_area: int = Field(50,",
        "min_component_area: int = Field(200,",
    ),
    Mutation(
        "dark-region step removed",
        "lisegagr_core/whitening.py",
        "return keep_large_dark_regions(out, settings.dark_region_min_area, "
        "settings.bright_threshold)",
        "return out",
    ),
    Mutation(
        "residue step removed",
        "lisegagr_core/whitening.py",
        "out = clear_dark_residue(out, settings.residue_max_area)",
        "out = out",
    ),
]

FIDELITY = [
    Mutation(
        "edges erased from round 3 (the old behaviour)",
        "lisegagr_core/config.py",
        "edge_erase_from_round: int = Field(4,",
        "edge_erase_from_round: int = Field(3,",
    ),
    Mutation(
        "dark regions from OpenCV's BT.601 grey",
        "lisegagr_core/whitening.py",
        "grey = rgb2gray(image)",
        "grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) / 255.0",
    ),
    Mutation(
        "dark regions at or below Otsu (≤)",
        "lisegagr_core/whitening.py",
        "grey < threshold_otsu(grey)",
        "grey <= threshold_otsu(grey)",
    ),
    Mutation(
        "dark regions 8-connected",
        "lisegagr_core/whitening.py",
        "_dark_pixels_rec709(image), connectivity=4",
        "_dark_pixels_rec709(image), connectivity=8",
    ),
    Mutation(
        "components 8-connected",
        "lisegagr_core/masks.py",
        "cv2.connectedComponentsWithStats(crop, connectivity=4)",
        "cv2.connectedComponentsWithStats(crop, connectivity=8)",
    ),
    Mutation(
        "square dilation kernel",
        "lisegagr_core/whitening.py",
        "return (offsets[:, None] + offsets[None, :] <= radius).astype(np.uint8)",
        "return (np.maximum(offsets[:, None], offsets[None, :]) <= radius).astype(np.uint8)",
    ),
    Mutation(
        "entropy counts pixels with a channel at 255",
        "lisegagr_core/refine.py",
        "pixels = pixels[(pixels != WHITE).all(axis=1)]",
        "pixels = pixels",
    ),
    Mutation(
        "de-duplication: greedy from the largest down",
        "lisegagr_core/masks.py",
        "    for visited in range(len(masks)):",
        "    for visited in np.argsort(-areas, kind='stable'):",
    ),
    Mutation(
        "crop white drop 0.9 → 0.5",
        "lisegagr_core/config.py",
        "crop_white_drop: float = Field(0.9,",
        "crop_white_drop: float = Field(0.5,",
    ),
    Mutation(
        "bright threshold 200 → 220",
        "lisegagr_core/config.py",
        "bright_threshold: int = Field(200,",
        "bright_threshold: int = Field(220,",
    ),
    Mutation(
        "residue area 200 → 100",
        "lisegagr_core/config.py",
        "residue_max_area: float = Field(200.0,",
        "residue_max_area: float = Field(100.0,",
    ),
    Mutation(
        "dark-region area 1000 → 500",
        "lisegagr_core/config.py",
        "dark_region_min_area: int = Field(1000,",
        "dark_region_min_area: int = Field(500,",
    ),
    Mutation(
        "max rounds 4 → 3",
        "lisegagr_core/config.py",
        "max_rounds: int = Field(4,",
        "max_rounds: int = Field(3,",
    ),
    Mutation(
        "thresholds not scaled to the image",
        "lisegagr_core/engine.py",
        "configs = [config.in_working_pixels(image.shape[:2]) for image in images]",
        "configs = [config for image in images]",
    ),
]


def _copy_project(target: Path) -> None:
    shutil.copytree(REPO / "lisegagr_core", target / "lisegagr_core")
    (target / "tests").mkdir()
    for name in ("__init__.py", "conftest.py", Path(TESTS).name):
        shutil.copy(REPO / "tests" / name, target / "tests" / name)
    shutil.copy(REPO / "pyproject.toml", target / "pyproject.toml")


def _run_tests(root: Path) -> tuple[bool, list[str]]:
    """(passed, ids of failed tests) of the conformance module in `root`."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", TESTS]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True)
    failed = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    return done.returncode == 0, failed


def _mutate(root: Path, mutation: Mutation) -> None:
    path = root / mutation.path
    text = path.read_text()
    if text.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.name}: {mutation.old!r} is not in {mutation.path} once")
    path.write_text(text.replace(mutation.old, mutation.new))


def run(mutations: list[Mutation]) -> list[dict[str, object]]:
    results = []
    for mutation in mutations:
        with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
            root = Path(tmp)
            _copy_project(root)
            _mutate(root, mutation)
            started = time.perf_counter()
            passed, failed = _run_tests(root)
            by_behaviour = [test for test in failed if PIN_TEST not in test]
            results.append(
                {
                    "mutation": mutation.name,
                    "file": mutation.path,
                    "from": mutation.old,
                    "to": mutation.new,
                    "caught": not passed,
                    "caught_without_default_pin": bool(by_behaviour),
                    "failed_tests": failed,
                    "seconds": round(time.perf_counter() - started, 1),
                }
            )
        verdict = "caught" if not passed else "MISSED"
        print(f"{verdict:7} {mutation.name} ({len(failed)} tests)", flush=True)
    return results


def _totals(results: list[dict[str, object]]) -> dict[str, int]:
    return {
        "mutations": len(results),
        "caught": sum(bool(r["caught"]) for r in results),
        "missed": sum(not r["caught"] for r in results),
        "caught_without_default_pin": sum(bool(r["caught_without_default_pin"]) for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/method_mutations.json")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mutation-baseline-") as tmp:
        _copy_project(Path(tmp))
        check = subprocess.run(
            [sys.executable, "-c", "import lisegagr_core; print(lisegagr_core.__file__)"],
            cwd=tmp,
            env={**os.environ, "PYTHONPATH": tmp},
            capture_output=True,
            text=True,
        )
        if not check.stdout.startswith(tmp):
            raise SystemExit(f"the copy is not what gets imported: {check.stdout or check.stderr}")
        if not _run_tests(Path(tmp))[0]:
            raise SystemExit("the conformance tests fail without any mutation")

    from _machine import machine

    issue = run(ISSUE_14)
    fidelity = run(FIDELITY)
    report = {
        "tests": TESTS,
        "machine": machine(),
        "issue_14": {"totals": _totals(issue), "mutations": issue},
        "fidelity_fixes": {"totals": _totals(fidelity), "mutations": fidelity},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps({"issue_14": _totals(issue), "fidelity_fixes": _totals(fidelity)}))


if __name__ == "__main__":
    main()
