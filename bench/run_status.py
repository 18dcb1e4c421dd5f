"""How fast `lisegagr status` answers on a finished county-size run, and what it imports.

    .venv/bin/python bench/run_status.py [--tiles 10000]

Writes a finished run's manifest of `--tiles` tiles (a 100 × 100 grid of 1024 px tiles: a
county of 0.6 m NAIP), times `lisegagr status` as a user runs it (a fresh process, best of
five) and lists the heavy modules that `import lisegagr_core.run.store` and reading the
manifest load (`python -X importtime`). Result: bench/results/run_status.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import machine

HEAVY = ("torch", "dask", "distributed", "zarr", "xarray", "geopandas", "cv2", "rasterio")
LISEGAGR = Path(sys.executable).parent / "lisegagr"


def write_manifest(out: Path, side: int) -> None:
    from lisegagr_core.grid import TileGrid
    from lisegagr_core.run import RegionPaths, RunManifest, TileStatus

    grid = TileGrid(side * 1024, side * 1024, core=1024, halo=64)
    tiles = {
        spec.key: TileStatus(spec.key, "computed", tile_hash="0" * 64, worker="tcp://10.0.0.5")
        for spec in grid
    }
    RunManifest(
        sources=["s3://imagery/county/"],
        mask_source={"kind": "sam", "name": "lisegagr-fields-v3", "weights_dir": None},
        model="lisegagr-fields-v3",
        config={},
        input={},
        grid=grid.to_dict(),
        tiles=tiles,
        state="complete",
    ).write(RegionPaths(str(out)))


def heavy_imports(code: str) -> list[str]:
    """The HEAVY top-level packages `code` loads in a fresh interpreter."""
    found = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    names = {line.split("|")[-1].strip() for line in found.splitlines() if "|" in line}
    return sorted(name for name in names if name in HEAVY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=10_000)
    args = parser.parse_args()
    side = round(args.tiles**0.5)
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "county"
        write_manifest(out, side)
        seconds = []
        for _ in range(5):
            started = time.perf_counter()
            subprocess.run([str(LISEGAGR), "status", str(out)], check=True, capture_output=True)
            seconds.append(time.perf_counter() - started)
        reading = f"from lisegagr_core.run import read_manifest; read_manifest({str(out)!r})"
        result = {
            "benchmark": "lisegagr status on a finished run",
            "machine": machine(),
            "tiles": side * side,
            "manifest_bytes": (out / "manifest.json").stat().st_size,
            "status_seconds_best": round(min(seconds), 3),
            "status_seconds_all": [round(s, 3) for s in seconds],
            "heavy_modules_import_store": heavy_imports("import lisegagr_core.run.store"),
            "heavy_modules_read_manifest": heavy_imports(reading),
        }
    target = Path(__file__).resolve().parent / "results" / "run_status.json"
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
