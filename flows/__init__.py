"""Prefect flows around the engine-free loop (scheduling, artifacts, scale-out).

The loop in :mod:`loop` runs as plain Python; this package is where Prefect wraps its
stages. Nothing here is required to run a campaign.
"""
