"""The region's georeferenced pixel grid and its tiles: cores on a lattice anchored in map
space, each read with a halo.

    grid = TileGrid.anchored(height=20_000, width=20_000, transform=t, crs=crs, core=896)
    tile = grid.tile(3, 5)       # TileSpec: key, core and read windows, padding
    grid.neighbours(tile)        # tiles whose read windows overlap this one's
    grid.chunks()                # the mosaic's chunk windows

Like odc-geo's GeoBox, a `TileGrid` carries its shape, transform and CRS together, so the
stages after segmentation (merge, mosaic, polygons, manifest) take the grid alone.

The grid covers exactly the sources' extent (pixel (0, 0) is the sources' top-left pixel),
while tile borders lie on multiples of `core` pixels counted from the map's origin (the
`anchor`): a region that grows keeps the keys, the pixels and so the cached results of its
old tiles. Tiles at the region's edge own only the part of their core inside it. Windows are
`rasterio.windows.Window` values in grid pixels (after any upscaling). A tile array always
has `core + 2 × halo` pixels a side; where the read window leaves the region, the missing
part is padding (`TileSpec.pad_top`, `pad_left`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window


@dataclass(frozen=True)
class TileSpec:
    """One tile: its place in the grid, the pixels it owns (core) and the pixels it sees (read).

    `read` is the full core grown by the halo and clamped to the region; `pad_top`, `pad_left`
    put `read` into a `size × size` tile array whose frame is fixed on the anchored lattice.
    """

    row: int
    col: int
    key: str
    core: Window
    read: Window
    pad_top: int
    pad_left: int
    size: int

    def tile_slices(self, window: Window) -> tuple[slice, slice]:
        """Where a window of the grid (inside `read`) lies in the tile array."""
        row0 = int(window.row_off - self.read.row_off) + self.pad_top
        col0 = int(window.col_off - self.read.col_off) + self.pad_left
        return slice(row0, row0 + int(window.height)), slice(col0, col0 + int(window.width))


@dataclass(frozen=True)
class TileGrid:
    """A `height × width` georeferenced grid, tiled by cores of `core` pixels a side (on the
    anchored lattice) read with `halo` pixels."""

    height: int
    width: int
    core: int = 896
    halo: int = 64
    transform: Affine = field(default_factory=Affine.identity)
    """Grid pixel → map coordinates."""
    crs: CRS | None = None
    anchor: tuple[int, int] = (0, 0)
    """(row, col) of pixel (0, 0) counted in pixels from the map origin (`anchored`): tile
    borders lie where that count is a multiple of `core`. Keys name the absolute tile
    (``r12c7``; ``m`` for a minus: ``rm17579c1953``)."""

    def __post_init__(self) -> None:
        if self.core < 1 or self.halo < 0:
            raise ValueError(f"core must be ≥ 1 and halo ≥ 0 (got {self.core}, {self.halo})")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"an empty raster ({self.height} × {self.width}) has no tiles")

    @classmethod
    def anchored(
        cls,
        height: int,
        width: int,
        *,
        transform: Affine,
        crs: CRS | None,
        core: int = 896,
        halo: int = 64,
    ) -> TileGrid:
        """The grid of a region whose pixel (0, 0) is at `transform`, with tiles anchored in
        map space (a grid without a CRS is anchored at its own first pixel)."""
        anchor = (0, 0)
        if crs is not None:
            anchor = (
                math.floor(transform.f / transform.e + 1e-6),
                math.floor(transform.c / transform.a + 1e-6),
            )
        return cls(height, width, core, halo, transform, crs, anchor)

    @classmethod
    def for_region(
        cls,
        height: int,
        width: int,
        *,
        transform: Affine,
        crs: CRS | None,
        core: int = 896,
        halo: int = 64,
    ) -> TileGrid:
        """The grid a run uses: `anchored`, except that a region that fits in one tile
        (`core` + 2 × `halo` a side) is that one tile, its pixel (0, 0) at the tile's corner.

        On the anchored lattice such a raster straddles up to four tiles, mostly padding, whose
        fields are then cut and merged again; as one tile it is segmented as `segment` would
        (docs/method.md has the measurement). Such a region keeps its tile only while it fits.
        """
        size = core + 2 * halo
        if height <= size and width <= size:
            return cls(height, width, size, 0, transform, crs, (0, 0))
        return cls.anchored(height, width, transform=transform, crs=crs, core=core, halo=halo)

    @property
    def tile_size(self) -> int:
        return self.core + 2 * self.halo

    @property
    def _phase(self) -> tuple[int, int]:
        """Where the first tile's full core starts before pixel (0, 0), in pixels."""
        return self.anchor[0] % self.core, self.anchor[1] % self.core

    @property
    def rows(self) -> int:
        return -(-(self._phase[0] + self.height) // self.core)

    @property
    def cols(self) -> int:
        return -(-(self._phase[1] + self.width) // self.core)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, row: int, col: int) -> TileSpec:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) is outside a {self.rows} × {self.cols} grid")
        # the full core on the lattice, in grid pixels (it may start before the grid)
        y0, x0 = row * self.core - self._phase[0], col * self.core - self._phase[1]
        cy0, cx0 = max(y0, 0), max(x0, 0)
        cy1, cx1 = min(y0 + self.core, self.height), min(x0 + self.core, self.width)
        ry0, rx0 = max(y0 - self.halo, 0), max(x0 - self.halo, 0)
        ry1 = min(y0 + self.core + self.halo, self.height)
        rx1 = min(x0 + self.core + self.halo, self.width)
        abs_row = (self.anchor[0] - self._phase[0]) // self.core + row
        abs_col = (self.anchor[1] - self._phase[1]) // self.core + col
        return TileSpec(
            row=row,
            col=col,
            key=f"r{abs_row}c{abs_col}".replace("-", "m"),
            core=Window(cx0, cy0, cx1 - cx0, cy1 - cy0),
            read=Window(rx0, ry0, rx1 - rx0, ry1 - ry0),
            pad_top=ry0 - (y0 - self.halo),
            pad_left=rx0 - (x0 - self.halo),
            size=self.tile_size,
        )

    def __iter__(self) -> Iterator[TileSpec]:
        for row in range(self.rows):
            for col in range(self.cols):
                yield self.tile(row, col)

    def neighbours(self, tile: TileSpec) -> list[TileSpec]:
        """The up-to-8 tiles around `tile` (their read windows overlap its read window)."""
        return [
            self.tile(r, c)
            for r in range(tile.row - 1, tile.row + 2)
            for c in range(tile.col - 1, tile.col + 2)
            if (r, c) != (tile.row, tile.col) and 0 <= r < self.rows and 0 <= c < self.cols
        ]

    def forward_pairs(self) -> Iterator[tuple[TileSpec, TileSpec]]:
        """Every pair of neighbouring tiles once (right, down, down-right, down-left)."""
        for tile in self:
            for dr, dc in ((0, 1), (1, 0), (1, 1), (1, -1)):
                r, c = tile.row + dr, tile.col + dc
                if 0 <= r < self.rows and 0 <= c < self.cols:
                    yield tile, self.tile(r, c)

    @property
    def chunk_rows(self) -> int:
        return -(-self.height // self.core)

    def chunks(self, chunk_row: int | None = None) -> list[Window]:
        """The mosaic's chunks (`core` a side from pixel (0, 0)), all or one row of them.

        They are offset from the tile cores wherever the region does not start on a tile
        border, so each chunk is written once, by whoever holds every tile it overlaps.
        """
        rows = range(self.chunk_rows) if chunk_row is None else (chunk_row,)
        return [
            Window(x, y, min(self.core, self.width - x), min(self.core, self.height - y))
            for y in (r * self.core for r in rows)
            for x in range(0, self.width, self.core)
        ]

    def tiles_over(self, window: Window) -> list[TileSpec]:
        """The tiles whose cores overlap `window` (grid pixels)."""
        row0 = (int(window.row_off) + self._phase[0]) // self.core
        row1 = (int(window.row_off + window.height) - 1 + self._phase[0]) // self.core
        col0 = (int(window.col_off) + self._phase[1]) // self.core
        col1 = (int(window.col_off + window.width) - 1 + self._phase[1]) // self.core
        return [self.tile(r, c) for r in range(row0, row1 + 1) for c in range(col0, col1 + 1)]

    def window_transform(self, window: Window) -> Affine:
        """The transform of a window's pixel (0, 0)."""
        return self.transform @ Affine.translation(window.col_off, window.row_off)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the grid's CRS."""
        x0, y0 = self.transform @ (0, 0)
        x1, y1 = self.transform @ (self.width, self.height)
        return min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)

    def crop(self, window: Window) -> TileGrid:
        """The grid of `window` (inside this grid): same lattice, so the same tile keys."""
        window = window.intersection(Window(0, 0, self.width, self.height))
        col, row = int(window.col_off), int(window.row_off)
        return TileGrid(
            int(window.height),
            int(window.width),
            self.core,
            self.halo,
            self.window_transform(window),
            self.crs,
            (self.anchor[0] + row, self.anchor[1] + col),
        )

    def to_dict(self) -> dict[str, Any]:
        """What a run's manifest records of its grid, JSON-ready (`from_dict` reads it back)."""
        return {
            "shape": [self.height, self.width],
            "transform": list(self.transform)[:6],
            "crs": self.crs.to_wkt() if self.crs is not None else None,
            "core": self.core,
            "halo": self.halo,
            "anchor": list(self.anchor),
            "rows": self.rows,
            "cols": self.cols,
        }

    @classmethod
    def from_dict(cls, described: dict[str, Any]) -> TileGrid:
        """The grid a manifest records (`to_dict`)."""
        height, width = described["shape"]
        crs = CRS.from_wkt(described["crs"]) if described.get("crs") else None
        return cls(
            height,
            width,
            described["core"],
            described["halo"],
            Affine(*described["transform"]),
            crs,
            (int(described["anchor"][0]), int(described["anchor"][1])),
        )
