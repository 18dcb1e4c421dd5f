"""A run planned, by value: what every stage needs, small enough to send to workers.

    run = plan_run(["s3://imagery/county/"], "s3://maps/county", config, spec)

`plan_run` opens the sources (metadata and a decimated read only), lays the tile grid over
them and records what a tile's hash covers; `assemble.claim_run` calls it, and the stages and
workers read the `RegionRun` it returns.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lisegagr_core.classify.model import loaded_classifier
from lisegagr_core.config import RegionConfig
from lisegagr_core.grid import TileGrid, TileSpec
from lisegagr_core.rasters import RasterSet, absolute_sources, open_rasters
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.scale import ground_sampling_m, scale_note
from lisegagr_core.source_specs import MaskSourceSpec

log = logging.getLogger(__name__)


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
        classifier_hash=loaded_classifier(config.classifier)[1] if config.classifier else None,
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
