"""The in-process executor: the whole run in this process (notebooks, tests, one machine).

    manifest = run_region(["scene.tif"], "out/", RegionConfig(), spec)

Its output is the flow's output (the same stages, store and manifest), so `lisegagr status`,
`resume`, `preview` and `export` work on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from lisegagr_core.config import RegionConfig
from lisegagr_core.run.manifest import RunManifest
from lisegagr_core.run.pipeline import TileCallback, plan_run, run_pipeline
from lisegagr_core.source_specs import SourceSpec

log = logging.getLogger(__name__)

T = TypeVar("T")


class InProcessExecutor:
    """Runs each stage here, one after another; a stage that fails is logged and reported
    to the pipeline (no retries: nothing here fails transiently that a retry would fix
    sooner than `resume`)."""

    def map(
        self, stage: Callable[..., T], jobs: Sequence[tuple[Any, ...]]
    ) -> Iterator[tuple[int, T | BaseException]]:
        for index, job in enumerate(jobs):
            try:
                yield index, stage(*job)
            except Exception as exc:  # reported to the pipeline, which records it
                log.exception("%s failed", stage.__name__)
                yield index, exc

    def call(self, stage: Callable[..., T], *args: Any) -> T:
        return stage(*args)


def run_region(
    sources: Sequence[str],
    out: str,
    config: RegionConfig,
    source: SourceSpec,
    *,
    on_tile: TileCallback | None = None,
    storage_options: Mapping[str, Any] | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> RunManifest:
    """Plan and run a region in this process; returns its manifest."""
    run = plan_run(
        sources,
        out,
        config,
        source,
        storage_options=storage_options,
        output_options=output_options,
    )
    return run_pipeline(run, InProcessExecutor(), on_tile)
