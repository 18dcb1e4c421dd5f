"""Cross-tile merge: instances seen by two overlapping tiles become one global instance.

Neighbouring tiles both label the strip where their read windows overlap. An instance of
one tile and an instance of the other are the same field when, inside that strip, their IoU
reaches `min_iou` or their shared pixels cover `min_share` of the smaller of the two. The
matched pairs are edges of a graph over all (tile, local id) nodes; its connected
components (union-find, by scipy) are the global instances.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
from numpy.typing import NDArray
from rasterio import windows
from scipy.sparse.csgraph import connected_components

from lisegagr_core.grid import TileSpec
from lisegagr_core.metrics import overlaps


def match_overlap(
    labels_a: NDArray[np.uint32],
    spec_a: TileSpec,
    labels_b: NDArray[np.uint32],
    spec_b: TileSpec,
    *,
    min_iou: float = 0.5,
    min_share: float = 0.8,
    min_pixels: int = 20,
) -> NDArray[np.int64]:
    """(P, 2) pairs (local id in a, local id in b) of the same field, from the shared strip.

    labels_a, labels_b: (T, T) uint32 tile labels.
    """
    if not windows.intersect(spec_a.read, spec_b.read):
        return np.zeros((0, 2), np.int64)
    strip = spec_a.read.intersection(spec_b.read)
    table = overlaps(labels_a[spec_a.tile_slices(strip)], labels_b[spec_b.tile_slices(strip)])
    inter = table.intersection
    smaller = np.minimum(table.true_areas[:, None], table.pred_areas[None, :])
    share = np.divide(inter, smaller, out=np.zeros(inter.shape), where=smaller > 0)
    same = (inter >= min_pixels) & ((table.iou >= min_iou) | (share >= min_share))
    rows, cols = np.nonzero(same)
    return np.stack([table.true_ids[rows], table.pred_ids[cols]], axis=1).astype(np.int64)


@dataclass(frozen=True)
class GlobalIds:
    """Local → global id maps, one per tile (index 0 maps background to 0).

    Global ids are consecutive from 1, numbered in tile order, and only instances that own
    pixels in some tile's core get one (an instance seen only in halos belongs to nobody).
    """

    maps: dict[str, NDArray[np.uint32]]
    count: int


def assign_global_ids(
    instance_counts: dict[str, int],
    core_ids: dict[str, NDArray[np.integer]],
    matches: Iterable[tuple[str, str, NDArray[np.int64]]],
) -> GlobalIds:
    """Union-find over every tile's instances.

    instance_counts: tile key → number of local ids (1..K); core_ids: tile key → local ids
    present in that tile's core; matches: (key a, key b, (P, 2) local id pairs).
    """
    keys: Sequence[str] = list(instance_counts)
    offsets = dict(zip(keys, np.cumsum([0, *[instance_counts[k] for k in keys]])[:-1], strict=True))
    total = int(sum(instance_counts.values()))
    rows: list[NDArray[np.int64]] = []
    cols: list[NDArray[np.int64]] = []
    for key_a, key_b, pairs in matches:
        if len(pairs):
            rows.append(offsets[key_a] + pairs[:, 0] - 1)
            cols.append(offsets[key_b] + pairs[:, 1] - 1)
    edges = scipy.sparse.coo_matrix(
        (
            np.ones(sum(len(r) for r in rows), np.int8),
            (
                np.concatenate(rows) if rows else np.zeros(0, np.int64),
                np.concatenate(cols) if cols else np.zeros(0, np.int64),
            ),
        ),
        shape=(total, total),
    )
    _, component = connected_components(edges, directed=False)
    # Number the components that own core pixels, in tile order of first appearance.
    numbering = np.zeros(component.max() + 1 if total else 0, np.int64)
    count = 0
    for key in keys:
        for local in np.asarray(core_ids[key], np.int64):
            c = component[offsets[key] + local - 1]
            if numbering[c] == 0:
                count += 1
                numbering[c] = count
    maps = {}
    for key in keys:
        local_to_global = np.zeros(instance_counts[key] + 1, np.uint32)
        nodes = offsets[key] + np.arange(instance_counts[key])
        local_to_global[1:] = numbering[component[nodes]] if len(nodes) else []
        maps[key] = local_to_global
    return GlobalIds(maps=maps, count=count)
