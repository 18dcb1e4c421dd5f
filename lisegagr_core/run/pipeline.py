"""One definition of a region run, for any executor.

    run = plan_run(["s3://imagery/county/"], "s3://maps/county", config, SamSpec(...))
    manifest = run_pipeline(run, InProcessExecutor())      # or the Prefect flow's executor

`plan_run` checks and describes everything by value (a `RegionRun` travels to workers);
`run_pipeline` is the run: the manifest, batches of tiles through `stages.segment_batch`,
the merge, the mosaic's chunks and the polygons. An `Executor` decides only where and how
each stage runs: in this process (`local.InProcessExecutor`), or as Prefect tasks on Dask
(`flows.region`), with retries and GPU placement.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from lisegagr_core.config import RegionConfig
from lisegagr_core.grid import TileGrid, TileSpec
from lisegagr_core.merge import GlobalIds
from lisegagr_core.rasters import RasterSet, absolute_sources, open_rasters
from lisegagr_core.run.lock import RunLock
from lisegagr_core.run.manifest import RunManifest, TileStatus
from lisegagr_core.run.stages import (
    classes_by_id,
    classifier_sha256,
    create_region_mosaic,
    describe_error,
    instance_attributes,
    merge_tiles,
    segment_batch,
    vectorise,
    write_chunk_row,
)
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.scale import ground_sampling_m, scale_note
from lisegagr_core.source_specs import MaskSourceSpec

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called with each tile's status as it finishes (progress bars).
TileCallback = Callable[[TileStatus], None]

#: Seconds between manifest writes while tiles finish (a killed run keeps its progress).
MANIFEST_EVERY_S = 10.0


@dataclass(frozen=True, eq=False)
class RegionRun:
    """A planned run, by value: what every stage needs, small enough to send to workers."""

    sources: tuple[str, ...]
    """Absolute source URLs (what the manifest records, for a resume from anywhere)."""
    rasters: RasterSet
    grid: TileGrid
    config: RegionConfig
    source: MaskSourceSpec
    paths: RegionPaths
    settings: dict[str, Any] = field(default_factory=dict)
    """What changes a tile's result besides its pixels: the input of its hash."""
    classifier_hash: str | None = None
    notes: tuple[str, ...] = ()
    """What the user should know before the run starts (one line each)."""
    lisegagr_version: str = field(default_factory=lambda: installed_version())
    """The planning process's lisegagr: a worker with another one refuses the run's tiles."""
    claim: str | None = None
    """The output lock's claim this run holds from before its server started
    (`assemble.claim_run`); None: the pipeline takes the lock itself."""

    @property
    def model(self) -> str:
        return self.source.describe()

    @property
    def device(self) -> str | None:
        return self.source.device

    def batches(self) -> list[list[TileSpec]]:
        """The grid's tiles in tile order, `tiles_per_task` at a time."""
        specs, size = list(self.grid), self.config.tiles_per_task
        return [specs[i : i + size] for i in range(0, len(specs), size)]


def installed_version() -> str:
    """This process's lisegagr version (``unknown`` when it is not installed as a package)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lisegagr")
    except PackageNotFoundError:
        return "unknown"


def plan_run(
    sources: Sequence[str],
    out: str,
    config: RegionConfig,
    source: MaskSourceSpec,
    *,
    storage_options: Mapping[str, Any] | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> RegionRun:
    """Open the sources (metadata and a decimated read only) and plan the run: its grid,
    the settings its tile hashes cover, the classifier's hash. Bad input raises `InputError`.

    storage_options: fsspec options for the sources; output_options: for `out`.
    """
    rasters = open_region(sources, config, storage_options)
    grid = TileGrid.for_region(
        rasters.height,
        rasters.width,
        transform=rasters.transform,
        crs=rasters.crs,
        core=config.core,
        halo=config.halo,
    )
    settings = {
        **config.segmentation_settings(source.model_id),
        "upscale": rasters.upscale,
        "upscale_model": _file_sha256(config.upscale_model) if config.upscale_model else None,
    }
    note = scale_note(
        ground_sampling_m(rasters.source_transform, rasters.crs),
        rasters.upscale,
        grid.tile_size,
        source.input_size or grid.tile_size,
        source.input_gsd_m,
        source.name,
    )
    if note is not None:
        log.info("%s", note)
    return RegionRun(
        sources=tuple(absolute_sources(sources)),
        rasters=rasters,
        grid=grid,
        config=config,
        source=source,
        paths=RegionPaths(out, dict(output_options or {})),
        settings=settings,
        classifier_hash=classifier_sha256(config.classifier) if config.classifier else None,
        notes=(note,) if note is not None else (),
    )


def open_region(
    sources: Sequence[str], config: RegionConfig, storage_options: Mapping[str, Any] | None = None
) -> RasterSet:
    """The sources as the run reads them: its bands, super-resolution and box."""
    rasters = open_rasters(
        sources,
        bands=config.bands,
        upscale=config.upscale,
        upscale_model=config.upscale_model,
        storage_options=storage_options,
    )
    return rasters.crop(config.bbox) if config.bbox is not None else rasters


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Executor(Protocol):
    """Where the stages run. Stages are plain functions of `stages`; an executor may run
    them anywhere, retry them, and must return what they return."""

    def map(
        self, stage: Callable[..., T], jobs: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, T | BaseException]]:
        """`stage(*job)` for every job; yields (job index, result or the exception that ended
        it) as each finishes, in any order."""
        ...

    def call(self, stage: Callable[..., T], *args: Any) -> T:
        """`stage(*args)`, raising its error."""
        ...


def run_pipeline(
    run: RegionRun, executor: Executor, on_tile: TileCallback | None = None
) -> RunManifest:
    """The run: holds the output's lock (or keeps the one `run.claim` holds), maps every
    tile, merges, writes the mosaic and the polygons, and keeps the manifest up to date. A
    tile that fails is recorded (its error in the manifest) and left as nodata; `resume`
    redoes it. Returns the manifest."""
    started = time.perf_counter()
    clock = StageClock()
    grid, paths = run.grid, run.paths
    manifest = RunManifest(
        sources=list(run.sources),
        mask_source=run.source.record(),
        model=run.model,
        config=run.config.model_dump(mode="json"),
        input=run.rasters.describe(),
        grid=grid.describe(),
        tiles={spec.key: TileStatus(spec.key, "pending") for spec in grid},
    )
    with RunLock(paths).hold(run.claim):
        manifest.write(paths)
        batches = run.batches()
        last_write = time.monotonic()
        with clock("tiles"):
            for index, outcome in executor.map(segment_batch, [(run, b) for b in batches]):
                if isinstance(outcome, BaseException):
                    error = describe_error(outcome)
                    outcome = [TileStatus(s.key, "failed", error=error) for s in batches[index]]
                for status in outcome:
                    manifest.tiles[status.key] = status
                    if on_tile is not None:
                        on_tile(status)
                if time.monotonic() - last_write > MANIFEST_EVERY_S:
                    manifest.write(paths)
                    last_write = time.monotonic()
        statuses = manifest.tiles
        if not run.config.classifier:
            log.warning("no classifier configured: instances are written as unclassified")
        with clock("merge"):
            ids = executor.call(merge_tiles, grid, run.config, paths, statuses)
            attributes = executor.call(
                instance_attributes, grid, paths, statuses, ids, run.classifier_hash, run.model
            )
        with clock("write"):
            executor.call(create_region_mosaic, grid, paths)
            lookup = classes_by_id(attributes, ids.count)
            jobs = []
            for row in range(grid.chunk_rows):
                keys = {spec.key for chunk in grid.chunks(row) for spec in grid.tiles_over(chunk)}
                jobs.append(
                    (
                        grid,
                        paths,
                        {k: statuses[k] for k in keys},
                        GlobalIds({k: ids.maps[k] for k in keys}, ids.count),
                        lookup,
                        row,
                    )
                )
            for _, written in executor.map(write_chunk_row, jobs):
                if isinstance(written, BaseException):
                    raise written
        with clock("vectorise"):
            manifest.fields = executor.call(vectorise, grid, paths, attributes)
        manifest.counts = manifest.count()
        manifest.state = "failed tiles" if manifest.counts["failed"] else "complete"
        manifest.seconds = round(time.perf_counter() - started, 1)
        manifest.stage_seconds = clock.seconds
        manifest.write(paths)
    return manifest


class StageClock:
    """Wall time per named stage: ``with clock("merge"): ...``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = round(time.perf_counter() - started, 3)
