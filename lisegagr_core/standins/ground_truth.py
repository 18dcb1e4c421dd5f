"""Ground truth as a mask source: masks from a known instance raster, not from a model.

A stand-in for SAM in tests and benchmarks, where the right answer is known: it lets the
engine, the merge and a whole region run be checked (and timed) without a model.

- `GroundTruthMaskSource`: the instances of a tile mostly visible in an image, with seeded,
  controllable misses and merges (as SAM might miss or fuse fields);
- `GroundTruthSpec`: the same by value (an instance-id raster on the region's output grid),
  a `source_specs.MaskSourceSpec` a worker builds per tile. It registers as the
  ``ground-truth`` entry point of ``lisegagr.mask_sources`` (pyproject.toml), so `resume`
  rebuilds it from a run's manifest without the core knowing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from affine import Affine
from numpy.typing import NDArray
from rasterio import windows
from rasterio.enums import Resampling
from rasterio.windows import Window

from lisegagr_core.config import AmgSettings
from lisegagr_core.grid import TileSpec
from lisegagr_core.masks import MaskSet
from lisegagr_core.sources import MaskSource
from lisegagr_core.whitening import white_pixels


class GroundTruthMaskSource:
    """Masks derived from a known instance raster, with controllable misses and merges.

    Each call returns the instances that are mostly visible (not white) in the image given,
    as SAM would segment what it can see. Call k (0-based) misses `miss_fractions[k]` of them
    and merges `merge_fractions[k]` of the touching pairs into one mask; calls past the end of
    a sequence use 0. Choices are seeded, so runs repeat exactly.

    instances: (H, W) integer ids over the whole tile, 0 = not a field.
    """

    def __init__(
        self,
        instances: NDArray[np.integer],
        *,
        miss_fractions: Sequence[float] = (),
        merge_fractions: Sequence[float] = (),
        min_visible_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        self.instances = np.asarray(instances)
        self.miss_fractions = tuple(miss_fractions)
        self.merge_fractions = tuple(merge_fractions)
        self.min_visible_fraction = min_visible_fraction
        self.seed = seed
        self.calls = 0
        self.name = "ground-truth"

    def generate_many(
        self, images: Sequence[NDArray[np.uint8]], regions: Sequence[Window]
    ) -> list[MaskSet]:
        return [self.generate(image, region) for image, region in zip(images, regions, strict=True)]

    def _fraction(self, fractions: tuple[float, ...], call: int) -> float:
        return fractions[call] if call < len(fractions) else 0.0

    def generate(self, image: NDArray[np.uint8], region: Window) -> MaskSet:
        call, self.calls = self.calls, self.calls + 1
        rng = np.random.default_rng((self.seed, call))
        truth = self.instances[region.toslices()]
        if truth.shape != image.shape[:2]:
            raise ValueError(f"region {region} does not match an image of shape {image.shape}")
        ids, areas = np.unique(truth[truth > 0], return_counts=True)
        visible_px = np.bincount(truth[~white_pixels(image)].ravel(), minlength=truth.max() + 1)
        visible = ids[visible_px[ids] >= self.min_visible_fraction * areas]

        n_missed = round(self._fraction(self.miss_fractions, call) * len(visible))
        visible = np.setdiff1d(visible, rng.choice(visible, size=n_missed, replace=False))
        groups = self._merge_groups(truth, visible, self._fraction(self.merge_fractions, call), rng)
        if not groups:
            return MaskSet.empty(image.shape[:2])
        return MaskSet.from_masks(np.stack([np.isin(truth, group) for group in groups]))

    @staticmethod
    def _merge_groups(
        truth: NDArray[np.integer],
        visible: NDArray[np.integer],
        merge_fraction: float,
        rng: np.random.Generator,
    ) -> list[list[int]]:
        """Visible ids as groups: singletons, and a share of touching pairs fused."""
        pairs = _touching_pairs(truth, set(visible.tolist()))
        n_merges = round(merge_fraction * len(pairs))
        merged: set[int] = set()
        groups: list[list[int]] = []
        for a, b in rng.permutation(pairs)[:n_merges] if n_merges else []:
            if a in merged or b in merged:
                continue
            merged.update((int(a), int(b)))
            groups.append([int(a), int(b)])
        groups.extend([int(i)] for i in visible if int(i) not in merged)
        return groups


def _touching_pairs(truth: NDArray[np.integer], allowed: set[int]) -> NDArray[np.int64]:
    """(P, 2) sorted id pairs of instances that share an edge (4-neighbourhood)."""
    pairs = []
    for a, b in ((truth[:, :-1], truth[:, 1:]), (truth[:-1, :], truth[1:, :])):
        differ = (a != b) & (a > 0) & (b > 0)
        pairs.append(
            np.stack([np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])], 1)
        )
    unique = np.unique(np.concatenate(pairs).astype(np.int64), axis=0)
    keep = [i for i, (a, b) in enumerate(unique) if a in allowed and b in allowed]
    return unique[keep].reshape(-1, 2)


@dataclass(frozen=True)
class GroundTruthSpec:
    """Masks from an instance-id raster on the region's output grid (tests, benchmarks)."""

    truth_path: str
    name = "ground truth"
    device = None
    input_size = None
    input_gsd_m = None

    @property
    def model_id(self) -> str:
        return f"ground-truth:{self.truth_path}"

    @property
    def shared_across_tiles(self) -> bool:
        return False  # each tile has its own truth: tiles are segmented one at a time

    def describe(self) -> str:
        return f"ground truth from {self.truth_path} (not a model)"

    def record(self) -> dict[str, str | None]:
        return {"kind": "ground-truth", "truth_path": self.truth_path}

    @classmethod
    def from_record(cls, record: dict[str, str | None]) -> GroundTruthSpec:
        return cls(str(record["truth_path"]))

    def unavailable_here(self) -> str | None:
        if Path(self.truth_path).is_file():
            return None
        return f"it has no ground-truth raster {self.truth_path}"

    def build(self, tile: TileSpec, amg: AmgSettings, grid_transform: Affine) -> MaskSource:
        """The truth under the tile's read window, found by map coordinates (nearest
        neighbour onto the grid when the truth has another resolution)."""
        truth = np.zeros((tile.size, tile.size), np.int64)
        with rasterio.open(self.truth_path) as src:
            window = windows.from_bounds(*windows.bounds(tile.read, grid_transform), src.transform)
            ids = src.read(
                1,
                window=window,
                out_shape=(int(tile.read.height), int(tile.read.width)),
                boundless=True,
                fill_value=0,
                resampling=Resampling.nearest,
            )
        truth[tile.tile_slices(tile.read)] = ids
        return GroundTruthMaskSource(truth)
