"""What the whitening deviations from the reference change, measured on the seed samples.

The seed samples are the reference's own 1000×1000 inputs. What is measured needs no SAM:
each deviation is applied to the round-1 whitening of each image (no masks yet) and the
share of pixels it changes is reported; the dark-region step is also measured on its own,
on the raw image, without the residue step that precedes it in a whitening. Deviations
whose effect needs SAM's masks (the de-duplication order, the dilation shape, the entropy's
255 rule) are not measured here.

    python bench/method_deviations.py   # → bench/results/method_deviations.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from lisegagr_core.config import WhiteningSettings
from lisegagr_core.whitening import (
    WHITE,
    clear_dark_residue,
    erase_strong_edges,
    keep_large_dark_regions,
    white_pixels,
)

REPO = Path(__file__).resolve().parents[1]
SEEDS = REPO.parent / "shared" / "data" / "seed-samples"


def _dark_regions_before(image: NDArray[np.uint8], min_area: int, bright: int) -> NDArray[np.uint8]:
    """The project's former dark-region step: OpenCV grey (BT.601), ≤ Otsu, 8-connected."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    _, dark = cv2.threshold(grey, 0, WHITE, cv2.THRESH_BINARY_INV | cv2.THRESH_OTSU)
    _, regions, stats, _ = cv2.connectedComponentsWithStats(dark, connectivity=8)
    large = stats[:, cv2.CC_STAT_AREA] >= min_area
    large[0] = False
    out = image.copy()
    out[~large[regions]] = WHITE
    out[np.all(image > bright, axis=2)] = WHITE
    return out


def _jpeg_round_trip(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """cv2.imwrite / cv2.imread of a .jpg, as the reference does between rounds."""
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    decoded = cv2.imdecode(encoded, cv2.IMREAD_COLOR) if ok else None
    if decoded is None:
        raise RuntimeError("JPEG round trip failed")
    return np.asarray(cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def _read_rgb(path: Path) -> NDArray[np.uint8]:
    bgr = cv2.imread(str(path))
    if bgr is None:
        raise SystemExit(f"{path}: not an image")
    return np.asarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), dtype=np.uint8)


def measure(path: Path, settings: WhiteningSettings) -> dict[str, float | str]:
    rgb = _read_rgb(path)
    cleaned = clear_dark_residue(rgb, settings.residue_max_area)
    now = keep_large_dark_regions(cleaned, settings.dark_region_min_area, settings.bright_threshold)
    before = _dark_regions_before(cleaned, settings.dark_region_min_area, settings.bright_threshold)
    kept_now, kept_before = ~white_pixels(now), ~white_pixels(before)
    alone_now = ~white_pixels(
        keep_large_dark_regions(rgb, settings.dark_region_min_area, settings.bright_threshold)
    )
    alone_before = ~white_pixels(
        _dark_regions_before(rgb, settings.dark_region_min_area, settings.bright_threshold)
    )
    erased = ~white_pixels(cleaned) & white_pixels(erase_strong_edges(cleaned, settings))
    round_tripped = _jpeg_round_trip(now)
    return {
        "image": path.name,
        "dark_share_rec709_lt_4conn": round(float(kept_now.mean()), 4),
        "dark_share_bt601_le_8conn": round(float(kept_before.mean()), 4),
        "dark_step_pixels_differing": round(float((kept_now ^ kept_before).mean()), 4),
        "dark_step_alone_pixels_differing": round(float((alone_now ^ alone_before).mean()), 4),
        "edge_erasing_share_of_image": round(float(erased.mean()), 4),
        "white_share_lost_to_jpeg": round(
            float(white_pixels(now).mean() - white_pixels(round_tripped).mean()), 4
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=Path, default=SEEDS)
    parser.add_argument("--out", type=Path, default=REPO / "bench/results/method_deviations.json")
    args = parser.parse_args()
    settings = WhiteningSettings()
    rows = [measure(path, settings) for path in sorted(args.seeds.glob("*.jpg"))]
    keys = [k for k in rows[0] if k != "image"]
    summary = {
        key: {
            "median": float(np.median([float(r[key]) for r in rows])),
            "max": max(float(r[key]) for r in rows),
        }
        for key in keys
    }
    report = {"images": len(rows), "summary": summary, "per_image": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
