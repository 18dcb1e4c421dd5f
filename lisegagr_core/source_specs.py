"""Mask sources described by value, so a worker process can build its own.

A Dask worker cannot receive a loaded SAM with every task; it receives a small spec and
builds the model once per process (`models.load_sam` caches it by checkpoint hash and device).

`MaskSourceSpec` is the contract every stage relies on; `SamSpec` is the production one (kind
``sam``). Other sources (the test stand-ins of `lisegagr_core.standins`, a user's own)
register under the ``lisegagr.mask_sources`` entry-point group by the ``kind`` their
`record()` writes, so a run's manifest can be resumed (`spec_from_record`) without this module
knowing them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from affine import Affine

from lisegagr_core.config import AmgSettings
from lisegagr_core.errors import InputError
from lisegagr_core.grid import TileSpec
from lisegagr_core.sources import MaskSource, SamMaskSource

#: A machine's own folder of checkpoints (a worker's, when the run's folder is not there).
WEIGHTS_DIR_ENV = "LISEGAGR_WEIGHTS_DIR"

#: The entry-point group where mask-source specs register, by the ``kind`` they record.
ENTRY_POINT_GROUP = "lisegagr.mask_sources"


@runtime_checkable
class MaskSourceSpec(Protocol):
    """A mask source by value: small, picklable, sent to every worker, built there per tile."""

    @property
    def name(self) -> str:
        """Short name for notes and logs (a model's name)."""
        ...

    @property
    def model_id(self) -> str:
        """What a tile's hash covers of the source: a different one recomputes every tile."""
        ...

    @property
    def device(self) -> str | None:
        """Where it runs (``cuda``, ``cpu``; None: CUDA when present)."""
        ...

    @property
    def input_size(self) -> int | None:
        """The model's input side in px, for the scale check (None: not a model)."""
        ...

    @property
    def input_gsd_m(self) -> float | None:
        """Metres per input pixel it was trained at, when known."""
        ...

    @property
    def shared_across_tiles(self) -> bool:
        """Whether one built source serves every tile (so tiles are segmented together)."""
        ...

    def describe(self) -> str:
        """One line saying what it is, for the run's record and the CLI."""
        ...

    def record(self) -> dict[str, str | None]:
        """What a run's manifest records of it; ``kind`` names its entry point."""
        ...

    def unavailable_here(self) -> str | None:
        """Why this process cannot build it (a missing or different file), or None."""
        ...

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        """The mask source for `tile` (built once per process where it is shared)."""
        ...


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

    @property
    def shared_across_tiles(self) -> bool:
        return True  # one model serves every tile, so tiles are segmented together

    @classmethod
    def choose(
        cls, model: str | None, weights_dir: str | Path | None, device: str | None
    ) -> tuple[SamSpec, dict[str, Any]]:
        """The spec of the SAM a run uses (`model`, a name or a path, else the default), and
        the settings recorded with that model. The checkpoint is found, hashed once and loaded
        here, so a missing or wrong one is one sentence before anything starts."""
        from lisegagr_core.models import load_chosen_sam, model_description
        from lisegagr_core.weights import DEFAULT_WEIGHTS_DIR

        folder = Path(weights_dir) if weights_dir else DEFAULT_WEIGHTS_DIR
        sam = load_chosen_sam(model, folder, "cpu")
        spec = cls(
            model or sam.name,
            str(folder.absolute()),
            sam.checkpoint_sha256,
            model_description(sam),
            device,
            sam.architecture.image_size,
            sam.input_gsd_m,
        )
        return spec, sam.engine_settings

    @classmethod
    def from_record(cls, record: dict[str, str | None]) -> SamSpec:
        """The spec a run's manifest recorded (`record`), its model found and checked again."""
        return cls.choose(record.get("name"), record.get("weights_dir"), record.get("device"))[0]

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

    def unavailable_here(self) -> str | None:
        """Why this process cannot load the run's checkpoint: no file where it looks, or a
        file with other bytes than the run's (sha256, hashed once per process)."""
        from lisegagr_core.weights import sha256_file

        _, _, path = self.checkpoint()
        if path is None:
            return None
        if not path.is_file():
            looked = " nor ".join(str(place[2]) for place in self.checkpoint_places())
            return (
                f"it has no model file {looked} (copy the run's checkpoint there, or set "
                f"{WEIGHTS_DIR_ENV} on the worker to a folder holding it)"
            )
        found = sha256_file(path)
        if found != self.checkpoint_sha256:
            return (
                f"its model file {path} has sha256 {found[:12]}…, not the run's "
                f"{self.checkpoint_sha256[:12]}… (copy the run's checkpoint there)"
            )
        return None

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        from lisegagr_core.models import load_sam

        model, folder, _ = self.checkpoint()
        return SamMaskSource(load_sam(model, weights_dir=folder, device=self.device), amg)


def spec_from_record(record: dict[str, str | None]) -> MaskSourceSpec:
    """The mask source a run's manifest recorded, rebuilt by the entry point of its ``kind``
    (group ``lisegagr.mask_sources``: its ``from_record``). An unknown kind is one sentence."""
    kind = record.get("kind") or "sam"
    if kind == "sam":  # the production source needs no installed entry point
        return SamSpec.from_record(record)
    found = entry_points(group=ENTRY_POINT_GROUP, name=kind)
    if not found:
        known = ", ".join(
            sorted({"sam", *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
        )
        raise InputError(
            f"the run's mask source is of kind {kind!r}, which no installed package provides "
            f"(known: {known}); install the package that made the run."
        )
    spec: MaskSourceSpec = next(iter(found)).load().from_record(record)
    return spec
