"""What the flow machinery costs per tile, and throughput with 1 and 2 Dask workers.

The mask source does (almost) no work: ground truth with no fields, one round, no
refinement. So the in-process executor (`lisegagr_core.run.run_region`) is the floor, and the
difference to the Prefect + Dask flow (the same pipeline) is orchestration: task submission,
state tracking, cluster start. `--before FILE` keeps an earlier
result beside the new one.

    python bench/orchestration.py [--size 2048 --core 256] [--before old.json]
        [-o bench/results/orchestration.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from _machine import machine
from affine import Affine

from flows.region import map_region, task_runner
from flows.server import prefect_server
from lisegagr_core.config import EngineConfig, RefineSettings, RegionConfig, RoundSettings
from lisegagr_core.run import plan_run, run_region
from lisegagr_core.standins.ground_truth import GroundTruthSpec

ORIGIN = Affine(1.0, 0.0, 256 * 1953, 0.0, -1.0, 256 * 17578)


def write_inputs(folder: Path, size: int) -> tuple[Path, Path]:
    profile = dict(
        driver="GTiff",
        width=size,
        height=size,
        crs="EPSG:32615",
        transform=ORIGIN,
        tiled=True,
        blockxsize=256,
        blockysize=256,
        compress="deflate",
    )
    imagery, truth = folder / "imagery.tif", folder / "truth.tif"
    rng = np.random.default_rng(0)
    with rasterio.open(imagery, "w", count=3, dtype="uint8", **profile) as dst:
        dst.write(rng.integers(60, 120, (3, size, size), dtype=np.uint8))
    with rasterio.open(truth, "w", count=1, dtype="uint32", **profile) as dst:
        dst.write(np.zeros((1, size, size), np.uint32))
    return imagery, truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--core", type=int, default=256)
    parser.add_argument(
        "-o", "--output", type=Path, default=Path("bench/results/orchestration.json")
    )
    parser.add_argument(
        "--before", type=Path, help="an earlier result file, kept under `before` to compare"
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lisegagr-orchestration-"))
    imagery, truth = write_inputs(work, args.size)
    engine = EngineConfig(
        working_size=None, rounds=RoundSettings(max_rounds=1), refine=RefineSettings(enabled=False)
    )
    config = RegionConfig(engine=engine, core=args.core, halo=32)
    spec = GroundTruthSpec(str(truth))

    started = time.perf_counter()
    report = run_region([str(imagery)], str(work / "in-process"), config, spec)
    in_process_s = time.perf_counter() - started
    tiles = len(report.tiles)

    flows: dict[str, dict[str, float]] = {}
    with prefect_server(home=work / "prefect"):
        for workers in (1, 2):
            started = time.perf_counter()
            run = plan_run([str(imagery)], str(work / f"flow-{workers}"), config, spec)
            summary = map_region.with_options(task_runner=task_runner(workers=workers))(run)
            seconds = time.perf_counter() - started
            assert summary.counts["computed"] == tiles
            flows[f"{workers}_workers"] = {
                "seconds": round(seconds, 2),
                "tiles_per_second": round(tiles / seconds, 2),
                "overhead_per_tile_s": round((seconds - in_process_s) / tiles, 3),
            }
    result = {
        "benchmark": "orchestration overhead (mask source doing no work)",
        "machine": machine(),
        "tiles": tiles,
        "tile": {"core": config.core, "halo": config.halo},
        "in_process_seconds": round(in_process_s, 2),
        "in_process_per_tile_s": round(in_process_s / tiles, 3),
        "flow": flows,
        "note": "flow times include starting the local Dask cluster; the Prefect server is "
        "started once before both runs and not counted",
    }
    if args.before is not None:
        result["before"] = json.loads(args.before.read_text())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
