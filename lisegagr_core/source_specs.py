"""Mask sources described by value, so a worker process can build its own.

A Dask worker cannot receive a loaded SAM with every task; it receives a small spec and
builds the model once per process (`models.load_sam` caches it by checkpoint hash and device).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from affine import Affine

from lisegagr_core.config import AmgSettings
from lisegagr_core.grid import TileSpec
from lisegagr_core.sources import MaskSource, SamMaskSource
from lisegagr_core.standins.ground_truth import GroundTruthSpec


@dataclass(frozen=True)
class SamSpec:
    """A SAM by name or path (`models.load_sam`), on a device (None: CUDA when present)."""

    name: str
    weights_dir: str
    checkpoint_sha256: str
    description: str
    device: str | None = None
    input_size: int | None = None
    """The model's input side (px), for the scale check."""
    input_gsd_m: float | None = None
    """Metres per input pixel the model was trained at, when its manifest entry records it."""

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


#: A mask source by value: each has `model_id`, `shared_across_tiles`, `describe()`,
#: `record()` and `build(tile, amg, transform)`.
SourceSpec = SamSpec | GroundTruthSpec


def spec_record(spec: SourceSpec) -> dict[str, str | None]:
    """What a run's manifest records of its mask source, for `resume`."""
    return spec.record()
