"""Durable artifacts: run layout, Zarr stores, checkpoints, manifests. No Prefect, no models."""
