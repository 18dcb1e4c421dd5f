"""The old name of `lisegagr_core.image_outputs` (one image's label raster, table, polygons,
overlay), kept for one release so imports of it still work, with a note.

Exports of a run (GeoPackage, GeoJSON, FlatGeobuf, COGs) are `lisegagr_core.run.export`.
"""

from __future__ import annotations

import warnings

from lisegagr_core.image_outputs import *  # noqa: F403

warnings.warn(
    "lisegagr_core.export is now lisegagr_core.image_outputs; the old name goes in a later "
    "release (a run's exports are lisegagr_core.run.export).",
    DeprecationWarning,
    stacklevel=2,
)
