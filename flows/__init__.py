"""Prefect flows: the stages' `tasks` composed into runs, and what the runs need around them.

- `region.region_flow` (``lisegagr-region``): plan a region and map it on Dask;
  `region.map_region` (``lisegagr-map-region``) maps an already planned run (the CLI's `run`
  and `resume`: a resume is a run whose stored tiles are found by their hash);
- `nightly.nightly_flow` (``lisegagr-nightly``): the region flow over whatever a source holds
  now, for a schedule;
- `cluster` (what a run needs from a Dask cluster), `server` (one Prefect server for a run),
  `local_worker` (the set-up of a local cluster's workers).

Deployment entrypoints point here (`flows/<file>.py:<flow>`). Flows hold no algorithm: every
step is a function of `lisegagr_core`, wrapped by a thin task in `tasks`.
"""
