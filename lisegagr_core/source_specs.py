"""Mask sources described by value, so a worker process can build its own.

A Dask worker cannot receive a loaded SAM with every task; it receives a small spec and
builds the model once per process (`models.load_sam` caches it by checkpoint hash and device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from rasterio import windows
from rasterio.enums import Resampling

from lisegagr_core.config import AmgSettings
from lisegagr_core.grid import TileSpec
from lisegagr_core.sources import GroundTruthMaskSource, MaskSource, SamMaskSource


@dataclass(frozen=True)
class SamSpec:
    """A SAM by name or path (`models.load_sam`), on a device (None: CUDA when present)."""

    name: str
    weights_dir: str
    checkpoint_sha256: str
    description: str
    device: str | None = None

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.checkpoint_sha256}"

    #: One source serves every tile, so tiles can be segmented together.
    shared_across_tiles = True

    def describe(self) -> str:
        return self.description

    def record(self) -> dict[str, str | None]:
        """What a run's manifest records of it, for `resume` (which loads the model again)."""
        return {
            "kind": "sam",
            "name": self.name,
            "weights_dir": self.weights_dir,
            "device": self.device,
        }

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        from lisegagr_core.models import load_sam

        return SamMaskSource(
            load_sam(self.name, weights_dir=Path(self.weights_dir), device=self.device), amg
        )


@dataclass(frozen=True)
class GroundTruthSpec:
    """Masks from an instance-id raster on the region's output grid (tests, benchmarks)."""

    truth_path: str

    @property
    def model_id(self) -> str:
        return f"ground-truth:{self.truth_path}"

    #: Each tile has its own truth: tiles are segmented one at a time.
    shared_across_tiles = False

    def describe(self) -> str:
        return f"ground truth from {self.truth_path} (not a model)"

    def record(self) -> dict[str, str | None]:
        return {"kind": "ground-truth", "truth_path": self.truth_path}

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        """The truth under the tile's read window, found by map coordinates (nearest
        neighbour onto the grid when the truth has another resolution)."""
        truth = np.zeros((tile.size, tile.size), np.int64)
        with rasterio.open(self.truth_path) as src:
            window = windows.from_bounds(*windows.bounds(tile.read, grid_transform), src.transform)
            ids = src.read(
                1,
                window=window,
                out_shape=(int(tile.read.height), int(tile.read.width)),
                boundless=True,
                fill_value=0,
                resampling=Resampling.nearest,
            )
        truth[tile.tile_slices(tile.read)] = ids
        return GroundTruthMaskSource(truth)


#: A mask source by value: each has `model_id`, `shared_across_tiles`, `describe()`,
#: `record()` and `build(tile, amg, transform)`.
SourceSpec = SamSpec | GroundTruthSpec


def spec_record(spec: SourceSpec) -> dict[str, str | None]:
    """What a run's manifest records of its mask source, for `resume`."""
    return spec.record()


def ground_truth_from_record(record: dict[str, str | None]) -> GroundTruthSpec | None:
    """The ground-truth spec a manifest recorded, or None for a SAM run (rebuilt by name)."""
    if record.get("kind") == "ground-truth" and record.get("truth_path"):
        return GroundTruthSpec(str(record["truth_path"]))
    return None
