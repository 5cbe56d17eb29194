"""Prefect flows: one per pipeline stage, and the pipeline that calls them. Wiring, not logic.

An embedded (ephemeral) Prefect server sends no telemetry and gets two minutes to start on a
busy machine, unless the environment says otherwise.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
