"""A region run: rasters of any size into a Zarr mosaic and GeoParquet polygons.

    store.py     the output folder: its layout, tile results, scores (`RegionPaths`)
    manifest.py  manifest.json, typed (`RunManifest`, `TileStatus`)
    lock.py      one run per output folder (`RunLock`)
    plan.py      a run planned, by value (`plan_run` → `RegionRun`)
    stages.py    the stages, plain functions (segment a batch, merge, write, vectorise)
    pipeline.py  the run over any executor (`run_pipeline`, `Executor`)
    assemble.py  a run assembled once for every entry point: model, settings, plan, output
                 claimed (`claim_run`, `RunRequest`)
    local.py     the in-process executor (`run_region`)
    status.py    where a run stands, for `lisegagr status` (`run_status`, `RunStatus`)
    export.py    every export of a run, for any GIS: fields as GeoPackage, GeoJSON, FlatGeobuf,
                 rasters as COGs (`export_run`; `EXPORT_FORMATS`, the one list of formats)

The Prefect flow (`flows/region.py`) is the other executor: the same pipeline, its stages
as Prefect tasks on Dask workers.

The names below are imported on first use: `from lisegagr_core.run import read_manifest`
loads the store and the manifest only, `run_region` the whole method.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lisegagr_core.run.assemble import RunRequest, claim_run
    from lisegagr_core.run.export import EXPORT_FORMATS, ExportFormat, export_run
    from lisegagr_core.run.local import InProcessExecutor, run_region
    from lisegagr_core.run.lock import RunLock
    from lisegagr_core.run.manifest import RunManifest, TileStatus, read_manifest
    from lisegagr_core.run.pipeline import Executor, run_pipeline
    from lisegagr_core.run.plan import RegionRun, plan_run
    from lisegagr_core.run.status import RunStatus, run_status
    from lisegagr_core.run.store import RegionPaths

#: Each name this package exposes, and the module that defines it. Imported on first use, so
#: reading a run (store, manifest, lock, status) does not load the method's stack (torch,
#: Dask, Zarr, GeoPandas), which only the pipeline and the executors need.
_WHERE = {
    "EXPORT_FORMATS": "export",
    "Executor": "pipeline",
    "RunRequest": "assemble",
    "claim_run": "assemble",
    "ExportFormat": "export",
    "InProcessExecutor": "local",
    "RegionPaths": "store",
    "RegionRun": "plan",
    "RunLock": "lock",
    "RunManifest": "manifest",
    "RunStatus": "status",
    "TileStatus": "manifest",
    "export_run": "export",
    "plan_run": "plan",
    "read_manifest": "manifest",
    "run_pipeline": "pipeline",
    "run_region": "local",
    "run_status": "status",
}

__all__ = [
    "EXPORT_FORMATS",
    "Executor",
    "ExportFormat",
    "InProcessExecutor",
    "RegionPaths",
    "RegionRun",
    "RunLock",
    "RunManifest",
    "RunRequest",
    "RunStatus",
    "TileStatus",
    "claim_run",
    "export_run",
    "plan_run",
    "read_manifest",
    "run_pipeline",
    "run_region",
    "run_status",
]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})
