"""Prefect flows: one per pipeline stage, and the pipeline that calls them. Wiring, not logic.

An embedded (ephemeral) Prefect server sends no telemetry and gets two minutes to start on a
busy machine, and the library's own warnings (logger "saeuron": damaged state files, for one)
appear in the runs' logs (and only on the console outside a run), unless the environment
says otherwise.
"""

import os

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "saeuron")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
