"""The nightly flow: map whatever imagery a folder or prefix holds now.

Deployment entrypoint: ``flows/nightly.py:nightly_flow`` (scheduled in infra/prefect.yaml,
or served by ``lisegagr serve SOURCE --out OUT --cron "0 2 * * *"``). The tile grid is
anchored in map space and every tile is cached by its hash, so a night in which new imagery
appeared computes only the tiles it touches, then merges and rewrites the mosaic and the
GeoParquet.
"""

from __future__ import annotations

from prefect import flow

from flows.region import region_flow
from lisegagr_core.run import RunManifest


@flow(name="lisegagr-nightly", flow_run_name="nightly {out}")
def nightly_flow(
    source: str,
    out: str,
    config: str | None = None,
    model: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    weights_dir: str | None = None,
) -> RunManifest:
    """Map `source` (a folder, prefix or glob of rasters) into `out`, computing only new tiles."""
    return region_flow(
        [source],
        out,
        config=config,
        model=model,
        scheduler=scheduler,
        workers=workers,
        weights_dir=weights_dir,
    )
