import numpy as np
import pytest
from rasterio.windows import Window

from lisegagr_core.grid import TileGrid


def test_cores_tile_the_raster_without_overlap_or_gap() -> None:
    grid = TileGrid(height=1000, width=700, core=256, halo=32)
    cover = np.zeros((1000, 700), np.int32)
    for tile in grid:
        cover[tile.core.toslices()] += 1
    assert (cover == 1).all()
    assert (grid.rows, grid.cols, len(grid)) == (4, 3, 12)


def test_read_window_is_core_plus_halo_clamped_and_padded() -> None:
    grid = TileGrid(height=1000, width=700, core=256, halo=32)
    corner = grid.tile(0, 0)
    assert corner.read == Window(0, 0, 288, 288)
    assert (corner.pad_top, corner.pad_left, corner.size) == (32, 32, 320)
    inner = grid.tile(1, 1)
    assert inner.read == Window(224, 224, 320, 320)
    assert (inner.pad_top, inner.pad_left) == (0, 0)
    last = grid.tile(3, 2)  # core 188 × 188 at the far corner
    assert last.core == Window(512, 768, 188, 232)
    assert last.read == Window(480, 736, 220, 264)
    rows, cols = last.tile_slices(last.core)
    assert (rows.start, cols.start) == (32, 32)


def test_neighbours_and_forward_pairs() -> None:
    grid = TileGrid(height=600, width=600, core=200, halo=10)
    assert len(grid.neighbours(grid.tile(1, 1))) == 8
    assert len(grid.neighbours(grid.tile(0, 0))) == 3
    pairs = list(grid.forward_pairs())
    assert len(pairs) == len({(a.key, b.key) for a, b in pairs}) == 20  # 6 + 6 + 4 + 4


def test_bad_grids_are_refused() -> None:
    with pytest.raises(ValueError):
        TileGrid(height=0, width=10)
    with pytest.raises(IndexError):
        TileGrid(height=10, width=10, core=5, halo=1).tile(2, 0)
