"""Mask sources described by value, so a worker process can build its own.

A Dask worker cannot receive a loaded SAM with every task; it receives a small spec and
builds the model once per process (`models.load_sam` caches it by checkpoint hash and device).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from affine import Affine

from lisegagr_core.config import AmgSettings
from lisegagr_core.grid import TileSpec
from lisegagr_core.sources import MaskSource, SamMaskSource
from lisegagr_core.standins.ground_truth import GroundTruthSpec

#: A machine's own folder of checkpoints (a worker's, when the run's folder is not there).
WEIGHTS_DIR_ENV = "LISEGAGR_WEIGHTS_DIR"


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

    def checkpoint(self) -> tuple[str, Path, Path | None]:
        """(model, weights folder, checkpoint file) as this process finds them: in the run's
        weights folder (or at the run's path), else in this machine's LISEGAGR_WEIGHTS_DIR (a
        worker whose folders differ from the client's). The file is None for the built-in
        tiny model; when found nowhere, it is where the run's folder would hold it."""
        from lisegagr_core.architectures import TINY_MODEL_NAME

        if self.name == TINY_MODEL_NAME:
            return self.name, Path(self.weights_dir), None
        places = self.checkpoint_places()
        for found in places:
            if found[2].is_file():
                return found
        return places[0]

    def checkpoint_places(self) -> list[tuple[str, Path, Path]]:
        """Where this process looks for the checkpoint, in order: (model, folder, file)."""
        from lisegagr_core.weights import DEFAULT_MANIFEST_PATH, Manifest

        folders = [Path(self.weights_dir)]
        if os.environ.get(WEIGHTS_DIR_ENV):
            folders.append(Path(os.environ[WEIGHTS_DIR_ENV]))
        places: list[tuple[str, Path, Path]] = []
        if self.name.endswith((".pt", ".pth")) or "/" in self.name or "\\" in self.name:
            path = Path(self.name)
            places.append((self.name, folders[0], path))
            places += [(str(f / path.name), f, f / path.name) for f in folders[1:]]
        else:
            for folder in folders:
                listed = folder / "manifest.json"
                manifest = Manifest.load(listed if listed.is_file() else DEFAULT_MANIFEST_PATH)
                entry = manifest.entries.get(self.name)
                if entry is not None:
                    places.append((self.name, folder, folder / entry.filename))
        return places or [(self.name, folders[0], folders[0] / self.name)]

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        from lisegagr_core.models import load_sam

        model, folder, _ = self.checkpoint()
        return SamMaskSource(load_sam(model, weights_dir=folder, device=self.device), amg)


#: A mask source by value: each has `model_id`, `shared_across_tiles`, `describe()`,
#: `record()` and `build(tile, amg, transform)`.
SourceSpec = SamSpec | GroundTruthSpec


def spec_record(spec: SourceSpec) -> dict[str, str | None]:
    """What a run's manifest records of its mask source, for `resume`."""
    return spec.record()
