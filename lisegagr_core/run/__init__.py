"""A region run: rasters of any size into a Zarr mosaic and GeoParquet polygons.

    store.py     the output folder: its layout, tile results, scores (`RegionPaths`)
    manifest.py  manifest.json, typed (`RunManifest`, `TileStatus`)
    lock.py      one run per output folder (`RunLock`)
    stages.py    the stages, plain functions (segment a batch, merge, write, vectorise)
    pipeline.py  the run over any executor (`plan_run`, `run_pipeline`, `Executor`)
    local.py     the in-process executor (`run_region`)
    export.py    the mosaic as Cloud-Optimised GeoTIFFs

The Prefect flow (`flows/region.py`) is the other executor: the same pipeline, its stages
as Prefect tasks on Dask workers.
"""

from lisegagr_core.run.local import InProcessExecutor, run_region
from lisegagr_core.run.lock import RunLock
from lisegagr_core.run.manifest import RunManifest, TileStatus, read_manifest
from lisegagr_core.run.pipeline import Executor, RegionRun, plan_run, run_pipeline
from lisegagr_core.run.store import RegionPaths

__all__ = [
    "Executor",
    "InProcessExecutor",
    "RegionPaths",
    "RegionRun",
    "RunLock",
    "RunManifest",
    "TileStatus",
    "plan_run",
    "read_manifest",
    "run_pipeline",
    "run_region",
]
