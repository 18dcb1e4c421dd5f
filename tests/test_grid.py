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


def test_an_anchored_grid_covers_exactly_its_region_with_tiles_on_the_map_lattice() -> None:
    from affine import Affine
    from rasterio.crs import CRS

    # a region starting 100 px right of and 60 px below a 256-px tile border
    transform = Affine(1.0, 0.0, 256 * 10 + 100, 0.0, -1.0, -(256 * -20) - 60)
    grid = TileGrid.anchored(
        500, 700, transform=transform, crs=CRS.from_epsg(32615), core=256, halo=16
    )
    assert grid.anchor == (-5060, 2660)  # pixels from the map origin: 60 and 100 past a border
    cover = np.zeros((500, 700), np.int32)
    for tile in grid:
        cover[tile.core.toslices()] += 1
        rows, cols = tile.tile_slices(tile.core)
        # each core sits where it would on the full lattice: borders at multiples of 256
        assert (grid.anchor[1] + tile.core.col_off) % 256 == 0 or tile.core.col_off == 0
        assert (grid.anchor[0] + tile.core.row_off) % 256 == 0 or tile.core.row_off == 0
        assert 16 <= rows.start < 16 + 256 and 16 <= cols.start < 16 + 256
    assert (cover == 1).all()
    first = grid.tile(0, 0)
    assert first.core == Window(0, 0, 156, 196)  # the part of a full core inside the region
    assert (first.pad_top, first.pad_left) == (16 + 60, 16 + 100)
    # the same lattice from a bigger region: same keys, same tile frames
    bigger = TileGrid.anchored(
        800,
        900,
        transform=transform @ Affine.translation(-200, -100),
        crs=CRS.from_epsg(32615),
        core=256,
        halo=16,
    )
    keys = {t.key for t in bigger}
    assert {t.key for t in grid} <= keys
    # chunks tile the region from its first pixel; each lies under at most four cores
    chunks = grid.chunks()
    assert sum(int(c.width * c.height) for c in chunks) == 500 * 700
    assert all(1 <= len(grid.tiles_over(c)) <= 4 for c in chunks)
    assert len(grid.chunks(0)) == len(chunks) // grid.chunk_rows
    # a box of the grid keeps the lattice; a description round-trips
    box = grid.crop(Window(300, 200, 100, 100))
    assert {t.key for t in box} <= {t.key for t in grid}
    assert box.transform == transform @ Affine.translation(300, 200)
    assert TileGrid.from_dict(grid.to_dict()) == grid


def test_a_grid_without_crs_starts_its_tiles_at_its_first_pixel() -> None:
    from affine import Affine

    grid = TileGrid.anchored(300, 300, transform=Affine(1, 0, 50, 0, -1, 70), crs=None)
    assert grid.anchor == (0, 0) and grid.tile(0, 0).key == "r0c0"


def test_a_region_that_fits_one_tile_is_that_tile() -> None:
    from affine import Affine
    from rasterio.crs import CRS

    # 1024² at 1 m in UTM: on the anchored 896-px lattice it straddles several tiles
    transform = Affine(1.0, 0.0, 500_300.0, 0.0, -1.0, 4_400_300.0)
    crs = CRS.from_epsg(32615)
    anchored = TileGrid.anchored(1024, 1024, transform=transform, crs=crs)
    assert len(anchored) > 1
    grid = TileGrid.for_region(1024, 1024, transform=transform, crs=crs)
    [tile] = list(grid)
    assert tile.core == tile.read == Window(0, 0, 1024, 1024)
    assert (tile.pad_top, tile.pad_left, tile.size) == (0, 0, 1024)
    small = TileGrid.for_region(300, 500, transform=transform, crs=crs)
    assert len(small) == 1 and small.tile(0, 0).size == 1024
    larger = TileGrid.for_region(1025, 1024, transform=transform, crs=crs)
    assert larger == TileGrid.anchored(1025, 1024, transform=transform, crs=crs)
