"""Where a run stands, from its manifest, its stored tiles and its lock: what `status` prints.

    summary = run_status("out/")        # one sentence (InputError) when it is no run
    summary.state_text                  # "complete", "interrupted, resumable (...)", ...
    summary.by_status                   # {"computed": 41, "failed": 1, ...}

Like the store, manifest and lock it reads, this imports none of the method (no torch, Dask,
Zarr or GeoPandas): a county's status is one JSON file, a listing and a lock file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lisegagr_core.run.lock import RunLock
from lisegagr_core.run.manifest import read_manifest
from lisegagr_core.run.store import RegionPaths
from lisegagr_core.storage import storage_errors


@dataclass(frozen=True)
class RunStatus:
    """A run's state and its tiles by status, as plain values."""

    output: str
    state: str
    """The manifest's "complete" or "failed tiles"; "running" while a live process holds the
    lock; "interrupted" when the manifest says running but its process is gone (resumable)."""
    model: str
    tiles: int
    by_status: dict[str, int]
    """Tiles by status, sorted by name; a tile the manifest last saw pending whose result is
    in the store counts as computed (it finished after the manifest was written)."""
    failed: dict[str, str | None] = field(default_factory=dict)
    """Each failed tile's key and error."""
    holder: dict[str, Any] | None = None
    """The live lock holder (host, pid, since) when `state` is "running"."""

    @property
    def state_text(self) -> str:
        """The state in words, with what to do about an interrupted run."""
        if self.state == "interrupted":
            return f"interrupted, resumable (`lisegagr resume {self.output}`)"
        if self.state == "running" and self.holder is not None:
            return f"running (pid {self.holder.get('pid')} on {self.holder.get('host')})"
        return self.state


def run_status(output: str, storage_options: Mapping[str, Any] | None = None) -> RunStatus:
    """Where the run in `output` stands; `InputError` (one sentence) when there is no run or
    its storage cannot be read."""
    paths = RegionPaths(output, dict(storage_options or {}))
    manifest = read_manifest(output, dict(storage_options or {}))
    with storage_errors(output):
        stored = paths.stored_tile_keys()
    by_status: dict[str, int] = {}
    for key, tile in manifest.tiles.items():
        state = tile.status
        if state == "pending" and key in stored:
            state = "computed"  # finished after the manifest was last written
        by_status[state] = by_status.get(state, 0) + 1
    state, holder = manifest.state, None
    if state == "running":
        with storage_errors(output):
            holder = RunLock(paths).holder()
        if holder is None or RunLock.is_gone(holder):
            state, holder = "interrupted", None
    return RunStatus(
        output=output,
        state=state,
        model=manifest.model,
        tiles=len(manifest.tiles),
        by_status=dict(sorted(by_status.items())),
        failed={k: t.error for k, t in manifest.tiles.items() if t.status == "failed"},
        holder=holder,
    )
