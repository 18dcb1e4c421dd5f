"""The in-process executor: the whole run in this process (notebooks, tests, one machine).

    manifest = run_region(["scene.tif"], "out/")                  # the default model
    manifest = run_region(["scene.tif"], "out/", RegionConfig(), spec)  # any mask source

Its output is the flow's output (the same stages, store and manifest), so `lisegagr status`,
`resume`, `preview` and `export` work on it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from lisegagr_core.config import RegionConfig
from lisegagr_core.run.assemble import RunRequest, claim_run
from lisegagr_core.run.manifest import RunManifest
from lisegagr_core.run.pipeline import TileCallback, run_pipeline
from lisegagr_core.source_specs import MaskSourceSpec

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
    config: RegionConfig | str | Path | None = None,
    source: MaskSourceSpec | None = None,
    *,
    model: str | None = None,
    weights_dir: str | Path | None = None,
    device: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    classify: bool = True,
    overwrite: bool = False,
    on_tile: TileCallback | None = None,
    storage_options: Mapping[str, Any] | None = None,
    output_options: Mapping[str, Any] | None = None,
) -> RunManifest:
    """Assemble (`assemble.claim_run`: the same checks, model choice and lock as `lisegagr
    run`) and run a region in this process; returns its manifest.

    config: a `RegionConfig` (used as given), or a configuration file or None (the model's
    settings and the default classifier added, as `lisegagr run` does); source: a mask-source
    spec, or None for the SAM `model` (None: the default) from `weights_dir`."""
    request = RunRequest(
        sources,
        out,
        config,
        dict(overrides or {}),
        model=model,
        weights_dir=weights_dir,
        device=device,
        source=source,
        classify=classify,
        overwrite=overwrite,
        storage_options=storage_options,
        output_options=output_options,
    )
    with claim_run(request) as run:
        return run_pipeline(run, InProcessExecutor(), on_tile)
