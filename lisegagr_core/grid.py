"""The tile grid: cores that tile the raster without overlap, each read with a halo.

    grid = TileGrid(height=20_000, width=20_000, core=896, halo=64)
    tile = grid.tile(3, 5)       # TileSpec: core and read windows, padding
    grid.neighbours(tile)        # tiles whose read windows overlap this one's

Windows are `rasterio.windows.Window` values in output-grid pixels (after any upscaling).
A tile always has `core + 2 × halo` pixels a side; where the read window leaves the raster,
the missing part is padding (`TileSpec.pad`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from rasterio.windows import Window


@dataclass(frozen=True)
class TileSpec:
    """One tile: its place in the grid, the pixels it owns (core) and the pixels it sees (read).

    `read` is the core grown by the halo and clamped to the raster; `pad` is (top, left) of
    padding that puts `read` into a `size × size` tile array.
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
        """Where a window of the output grid (inside `read`) lies in the tile array."""
        row0 = int(window.row_off - self.read.row_off) + self.pad_top
        col0 = int(window.col_off - self.read.col_off) + self.pad_left
        return slice(row0, row0 + int(window.height)), slice(col0, col0 + int(window.width))


@dataclass(frozen=True)
class TileGrid:
    """Cores of `core` pixels a side over a `height × width` raster, read with `halo` pixels."""

    height: int
    width: int
    core: int = 896
    halo: int = 64
    origin_tile: tuple[int, int] = (0, 0)
    """Absolute (row, col) of tile (0, 0) on a grid anchored in map space, for stable keys
    (``r12c7``; ``m`` for a minus: ``rm17579c1953``): a region that grows keeps the keys, and
    so the cached results, of its old tiles."""

    def __post_init__(self) -> None:
        if self.core < 1 or self.halo < 0:
            raise ValueError(f"core must be ≥ 1 and halo ≥ 0 (got {self.core}, {self.halo})")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"an empty raster ({self.height} × {self.width}) has no tiles")

    @property
    def tile_size(self) -> int:
        return self.core + 2 * self.halo

    @property
    def rows(self) -> int:
        return -(-self.height // self.core)

    @property
    def cols(self) -> int:
        return -(-self.width // self.core)

    def __len__(self) -> int:
        return self.rows * self.cols

    def tile(self, row: int, col: int) -> TileSpec:
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            raise IndexError(f"tile ({row}, {col}) is outside a {self.rows} × {self.cols} grid")
        y0, x0 = row * self.core, col * self.core
        core = Window(x0, y0, min(self.core, self.width - x0), min(self.core, self.height - y0))
        ry0, rx0 = max(y0 - self.halo, 0), max(x0 - self.halo, 0)
        ry1 = min(y0 + self.core + self.halo, self.height)
        rx1 = min(x0 + self.core + self.halo, self.width)
        abs_row, abs_col = row + self.origin_tile[0], col + self.origin_tile[1]
        return TileSpec(
            row=row,
            col=col,
            key=f"r{abs_row}c{abs_col}".replace("-", "m"),
            core=core,
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
