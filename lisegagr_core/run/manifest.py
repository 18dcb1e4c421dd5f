"""The run's manifest: what was mapped, how, and what became of each tile.

Both executors (in-process and the Prefect flow) write it the same way, at the start
(every tile "pending"), as tiles finish, and at the end; `status`, `resume`, `preview` and
`export` read only it and the outputs beside it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from lisegagr_core.errors import InputError
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.storage import storage_errors

if TYPE_CHECKING:
    from lisegagr_core.grid import TileGrid

#: A tile's status: where it stands in this run.
TILE_STATES = ("pending", "computed", "cached", "empty", "failed")


@dataclass
class TileStatus:
    """What happened to one tile in this run."""

    key: str
    status: str  # one of TILE_STATES
    tile_hash: str | None = None
    instances: int = 0
    seconds: float = 0.0
    error: str | None = None
    worker: str | None = None

    @property
    def segmented(self) -> bool:
        """Whether the tile has a stored result (computed now or before)."""
        return self.tile_hash is not None and self.status in ("computed", "cached")


@dataclass
class RunManifest:
    """manifest.json, typed."""

    sources: list[str]
    """Absolute source URLs, as `open_rasters` takes them (a re-run or resume reads them)."""
    mask_source: dict[str, str | None]
    """What made the masks, by value (`source_specs.spec_record`)."""
    model: str
    config: dict[str, Any]
    input: dict[str, Any]
    grid: dict[str, Any]
    tiles: dict[str, TileStatus]
    state: str = "running"  # "running", "complete" or "failed tiles"
    fields: int | None = None
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def tile_grid(self) -> TileGrid:
        from lisegagr_core.grid import TileGrid  # rasterio: not needed to read a manifest

        return TileGrid.from_dict(self.grid)

    def count(self) -> dict[str, int]:
        """Tiles by status (computed, cached, empty, failed)."""
        return {
            state: sum(1 for t in self.tiles.values() if t.status == state)
            for state in ("computed", "cached", "empty", "failed")
        }

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    def write(self, paths: RegionPaths) -> None:
        paths.write_text(paths.manifest, self.to_json())

    @classmethod
    def from_json(cls, text: str, where: str) -> RunManifest:
        data = json.loads(text)
        required = [
            name
            for name in ("sources", "mask_source", "model", "config", "input", "grid", "tiles")
            if name not in data
        ]
        if required:
            raise InputError(
                f"{where} lacks {', '.join(required)}: it was written by an older lisegagr; "
                "run the region again into a new folder."
            )
        data["tiles"] = {k: TileStatus(**v) for k, v in data["tiles"].items()}
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def read_manifest(output: str, storage_options: dict[str, Any] | None = None) -> RunManifest:
    """The manifest of the run in `output`; one sentence when there is none."""
    paths = RegionPaths(output, dict(storage_options or {}))
    with storage_errors(paths.manifest):
        try:
            text = paths.read_text(paths.manifest)
        except FileNotFoundError:
            raise InputError(
                f"{paths.manifest}: no such file; is {output} the output of `lisegagr run`?"
            ) from None
    try:
        return RunManifest.from_json(text, paths.manifest)
    except (ValueError, TypeError, KeyError) as exc:
        raise InputError(
            f"{paths.manifest} is not a run manifest ({exc.__class__.__name__})."
        ) from None
