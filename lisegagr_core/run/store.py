"""A run's output folder (local or any fsspec URL): the one place its layout is spelled.

    mosaic.zarr                      labels and classes (`lisegagr_core.mosaic`)
    fields.parquet                   one polygon per field (GeoParquet)
    manifest.json                    settings, input, grid, model, per-tile status (`manifest`)
    tiles/<key>.<hash>.npz           each tile's segmentation: the cache a re-run resumes from
    scores/<key>.<hash>.<clf>.json   P(field) of each instance of a tile, per classifier
    .lock                            the run writing here (`lock`)
    fields.gpkg, labels.tif, …       exports, where `lisegagr export` writes them by default
                                     (`exports`: named by `export.EXPORT_FORMATS`)

Tile results and scores are addressed by content (tile hash, classifier hash): whichever
executor wrote them, a later run that finds them does not compute them again.

Reading the layout, the manifest and the lock needs none of the method: this module imports
only fsspec at the top, and numpy and the tile types inside the functions that (de)serialise a
tile result (the list of export formats, itself light, inside `exports`), so `lisegagr status`
and a notebook reading a run start in a fraction of a second.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fsspec

if TYPE_CHECKING:
    from lisegagr_core.tiles import TileResult

#: The files each format of `export.export_run` writes, named as in this folder (where they go
#: by default); `clear` removes them with the run.
EXPORT_FILES: dict[str, tuple[str, ...]] = {
    "gpkg": ("fields.gpkg",),
    "geojson": ("fields.geojson",),
    "fgb": ("fields.fgb",),
    "cog": ("labels.tif", "classes.tif"),
}

#: Everything a run writes; `clear` removes these and the exports beside them (`exports`).
RUN_OUTPUTS = ("mosaic.zarr", "fields.parquet", "manifest.json", "tiles", "scores")


@dataclass(frozen=True)
class RegionPaths:
    """Where a run's outputs live, under one folder or URL, and how they are read and written."""

    root: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def join(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    @property
    def mosaic(self) -> str:
        return self.join("mosaic.zarr")

    @property
    def fields(self) -> str:
        return self.join("fields.parquet")

    @property
    def manifest(self) -> str:
        return self.join("manifest.json")

    @property
    def lock(self) -> str:
        return self.join(".lock")

    def tile(self, key: str, digest: str) -> str:
        return self.join("tiles", f"{key}.{digest[:16]}.npz")

    def scores(self, key: str, digest: str, classifier_hash: str) -> str:
        return self.join("scores", f"{key}.{digest[:16]}.{classifier_hash[:16]}.json")

    def exports(self, format: str | None = None) -> list[str]:
        """Where `export_run` writes `format` (a key of `export.EXPORT_FORMATS`) by default, or
        every format when None: files in this folder, named by the format."""
        formats = EXPORT_FILES.values() if format is None else [EXPORT_FILES[format]]
        return [self.join(name) for files in formats for name in files]

    def outputs(self) -> list[str]:
        """Everything a run and its exports write here: what `clear` removes."""
        return [*(self.join(name) for name in RUN_OUTPUTS), *self.exports()]

    # -- reading and writing -------------------------------------------------------------

    def _fs(self, url: str) -> tuple[Any, str]:
        return fsspec.core.url_to_fs(url, **self.storage_options)

    def exists(self, url: str) -> bool:
        fs, path = self._fs(url)
        return bool(fs.exists(path))

    def read_text(self, url: str) -> str:
        fs, path = self._fs(url)
        with fs.open(path, "r") as stream:
            return str(stream.read())

    def write_text(self, url: str, text: str) -> None:
        fs, path = self._fs(url)
        fs.makedirs(fs._parent(path), exist_ok=True)
        with fs.open(path, "w") as stream:
            stream.write(text)

    def create_text(self, url: str, text: str) -> bool:
        """Write `text` to `url` only if nothing is there: True when this call created it.

        Exclusive on local disks (O_EXCL) and on stores that implement fsspec's mode ``x``
        (S3 through s3fs: a conditional put); elsewhere a last writer may win."""
        fs, path = self._fs(url)
        fs.makedirs(fs._parent(path), exist_ok=True)
        try:
            with fs.open(path, "xb") as stream:
                stream.write(text.encode())
        except FileExistsError:
            return False
        return True

    def remove(self, url: str) -> None:
        fs, path = self._fs(url)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def clear(self) -> None:
        """Remove every output of a run (mosaic, polygons, manifest, tiles, scores) and the
        exports written beside them (`exports`), so nothing of an old map stays."""
        for url in self.outputs():
            self.remove(url)

    def stored_tile_keys(self) -> set[str]:
        """Keys of the tiles with a stored result (what a killed run left behind); a result
        still being written (`.part`) is not one."""
        fs, path = self._fs(self.join("tiles"))
        if not fs.exists(path):
            return set()
        names = (name.rsplit("/", 1)[-1] for name in fs.ls(path, detail=False))
        return {name.split(".")[0] for name in names if name.endswith(".npz")}

    # -- tile results and scores ---------------------------------------------------------

    def save_tile_result(self, result: TileResult) -> None:
        """One compressed .npz (labels, packed valid mask, JSON records); atomic locally."""
        import numpy as np

        buffer = io.BytesIO()
        records = json.dumps(
            {
                "key": result.key,
                "tile_hash": result.tile_hash,
                "seconds": result.seconds,
                "instances": [asdict(i) for i in result.instances],
            }
        )
        np.savez_compressed(
            buffer,
            labels=result.labels,
            valid=np.packbits(result.valid),
            records=np.frombuffer(records.encode(), np.uint8),
        )
        url = self.tile(result.key, result.tile_hash)
        if "://" not in url:
            path = Path(url)
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".part")
            partial.write_bytes(buffer.getvalue())
            partial.replace(path)
            return
        fs, path_in_fs = self._fs(url)
        with fs.open(path_in_fs, "wb") as stream:
            stream.write(buffer.getvalue())

    def load_tile_result(self, key: str, digest: str) -> TileResult:
        import numpy as np

        from lisegagr_core.engine import Instance
        from lisegagr_core.tiles import TileResult

        fs, path = self._fs(self.tile(key, digest))
        with fs.open(path, "rb") as stream:
            data = np.load(io.BytesIO(stream.read()))
        records = json.loads(data["records"].tobytes().decode())
        instances = [Instance(**{**i, "bbox": tuple(i["bbox"])}) for i in records["instances"]]
        labels = data["labels"]
        valid = np.unpackbits(data["valid"], count=labels.size).astype(bool)
        return TileResult(
            records["key"],
            records["tile_hash"],
            labels,
            valid.reshape(labels.shape),
            instances,
            records["seconds"],
        )

    def save_scores(
        self, key: str, digest: str, classifier_hash: str, scores: Mapping[int, float]
    ) -> None:
        text = json.dumps({str(k): v for k, v in scores.items()})
        self.write_text(self.scores(key, digest, classifier_hash), text)

    def load_scores(self, key: str, digest: str, classifier_hash: str) -> dict[int, float]:
        loaded = json.loads(self.read_text(self.scores(key, digest, classifier_hash)))
        return {int(k): float(v) for k, v in loaded.items()}
