"""Prefect flows: composition of `tasks` into the region, nightly, resume and evaluate runs.

Deployment entrypoints point here (`flows/<file>.py:<flow>`). Flows hold no algorithm: every
step is a function of `lisegagr_core`, wrapped by a thin task in `tasks`.
"""
