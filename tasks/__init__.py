"""Thin Prefect tasks over `lisegagr_core` functions: retries, cache keys, resources, logging.

A task holds no algorithm; what it computes is a library function that runs without Prefect.
"""
