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
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

from lisegagr_core.merge import GlobalIds
from lisegagr_core.run.lock import RunLock
from lisegagr_core.run.manifest import RunManifest, TileStatus
from lisegagr_core.run.plan import RegionRun
from lisegagr_core.run.stages import (
    classes_by_id,
    create_region_mosaic,
    describe_error,
    instance_attributes,
    merge_tiles,
    segment_batch,
    vectorise,
    write_chunk_row,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Called with each tile's status as it finishes (progress bars).
TileCallback = Callable[[TileStatus], None]

#: Seconds between manifest writes while tiles finish (a killed run keeps its progress).
MANIFEST_EVERY_S = 10.0


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
        input=run.rasters.to_dict(),
        grid=grid.to_dict(),
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
