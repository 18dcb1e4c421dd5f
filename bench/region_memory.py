"""Peak memory and time of ingest + merge + write + vectorise on a generated large raster.

A procedural farmland (fields on a grid of 320 × 420 px parcels with 8-px roads) is written
block by block as a tiled GeoTIFF of SIZE × SIZE px, then mapped with the ground-truth mask
source (one round, no refinement: this measures the path around SAM, not SAM). Memory must
be bounded by the tiles in flight, not by the raster's size: compare --size 5000 and 20000.

    python bench/region_memory.py [--size 20000] [-o bench/results/region_memory.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from _machine import machine
from affine import Affine
from rasterio.windows import Window

PARCEL_H, PARCEL_W, ROAD = 320, 420, 8


def truth_window(window: Window, width: int) -> np.ndarray:
    """(h, w) int64 field ids of a window of the procedural farmland (0 = road)."""
    rows = np.arange(int(window.row_off), int(window.row_off + window.height))[:, None]
    cols = np.arange(int(window.col_off), int(window.col_off + window.width))[None, :]
    per_row = -(-width // PARCEL_W)
    ids = (rows // PARCEL_H) * per_row + cols // PARCEL_W + 1
    road = ((rows % PARCEL_H) < ROAD) | ((cols % PARCEL_W) < ROAD)
    return np.where(road, 0, ids)


def expected_fields(size: int) -> int:
    """Parcels of the procedural farmland that show some field inside a size × size raster."""

    def count(length: int, parcel: int) -> int:
        whole, rest = divmod(length, parcel)
        return whole + (1 if rest > ROAD else 0)

    return count(size, PARCEL_H) * count(size, PARCEL_W)


def render(ids: np.ndarray, seed: int) -> np.ndarray:
    """(3, h, w) uint8 colours per field id with a little texture; roads grey."""
    palette = np.random.default_rng(seed).integers(40, 200, (4096, 3))
    rgb = palette[ids % 4096].astype(np.int16)
    rgb[ids == 0] = 128
    rgb += np.random.default_rng(int(ids.sum()) % 2**32).integers(-6, 7, rgb.shape, dtype=np.int16)
    return np.moveaxis(np.clip(rgb, 0, 255).astype(np.uint8), -1, 0)


def write_raster(path: Path, size: int) -> None:
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        count=3,
        dtype="uint8",
        crs="EPSG:32615",
        transform=Affine(1.0, 0, 500_000.0, 0, -1.0, 4_500_000.0),
        tiled=True,
        blockxsize=512,
        blockysize=512,
        compress="deflate",
        BIGTIFF="YES",
    )
    with rasterio.open(path, "w", **profile) as dst:
        for row in range(0, size, 2048):
            for col in range(0, size, 2048):
                window = Window(col, row, min(2048, size - col), min(2048, size - row))
                dst.write(render(truth_window(window, size), 0), window=window)


@dataclass(frozen=True)
class ProceduralTruth:
    """A mask source spec of the benchmark's own fields, drawn per tile (no truth raster)."""

    size: int
    model_id = "ground-truth:procedural"
    name = "ground truth (benchmark)"
    shared_across_tiles = False
    device = input_size = input_gsd_m = None

    def unavailable_here(self) -> None:
        return None

    def describe(self) -> str:
        return "ground truth (benchmark)"

    def record(self) -> dict[str, str | None]:
        return {"kind": "benchmark"}

    def build(self, tile, amg, transform):  # type: ignore[no-untyped-def]
        from lisegagr_core.standins.ground_truth import GroundTruthMaskSource

        truth = np.zeros((tile.size, tile.size), np.int64)
        truth[tile.tile_slices(tile.read)] = truth_window(tile.read, self.size)
        return GroundTruthMaskSource(truth)


def run_stage(raster: Path, out: Path, size: int) -> dict[str, object]:
    """Runs in its own process so that its peak RSS is the pipeline's alone."""
    from lisegagr_core.config import EngineConfig, RefineSettings, RegionConfig, RoundSettings
    from lisegagr_core.run import run_region

    engine = EngineConfig(
        working_size=None, rounds=RoundSettings(max_rounds=1), refine=RefineSettings(enabled=False)
    )
    config = RegionConfig(engine=engine)
    started = time.perf_counter()
    report = run_region([str(raster)], str(out), config, ProceduralTruth(size))  # type: ignore[arg-type]
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "stage_seconds": report.stage_seconds,
        "tiles": len(report.tiles),
        "fields": report.fields,
        "expected_fields": expected_fields(size),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000)
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("bench/results/region_memory.json")
    )
    parser.add_argument(
        "--stage", nargs=3, metavar=("RASTER", "OUT", "SIZE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(Path(args.stage[0]), Path(args.stage[1]), int(args.stage[2]))))
        return
    work = Path(tempfile.mkdtemp(prefix="lisegagr-bench-"))
    try:
        started = time.perf_counter()
        raster = work / "farmland.tif"
        write_raster(raster, args.size)
        generate_s = time.perf_counter() - started
        stage = subprocess.run(
            [sys.executable, __file__, "--stage", str(raster), str(work / "out"), str(args.size)],
            check=True,
            capture_output=True,
            text=True,
        )
        measured = json.loads(stage.stdout.strip().splitlines()[-1])
        result = {
            "benchmark": "ingest + segment (ground truth) + merge + write + vectorise",
            "machine": machine(),
            "raster": [args.size, args.size],
            "raster_mib_uncompressed": round(args.size * args.size * 3 / 2**20),
            "tile": {"core": 896, "halo": 64, "in_flight": 1},
            "generate_seconds": round(generate_s, 1),
            **measured,
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
