"""Prefect flows: one per pipeline stage, and the pipeline that calls them. Wiring, not logic."""
