"""Prefect flows: one per pipeline stage, and the pipeline that calls them. Wiring, not logic.

A command line of these flows (`python -m flows.launch`, `python -m flows.<stage>`) runs in a
child process of the one started (flows.supervise), which is split off here, before anything
heavy is imported.

An embedded (ephemeral) Prefect server sends no telemetry and gets two minutes to start on a
busy machine, and the library's own warnings (logger "saeuron": damaged state files, for one)
appear in the runs' logs (and only on the console outside a run), unless the environment
says otherwise.
"""

import os
import sys

from flows.supervise import supervise, supervised

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "saeuron")
os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")

COMMANDS = ("flows.launch", "flows.harvest", "flows.train", "flows.score", "flows.evaluate",
            "flows.benchmark")
"""The modules whose `python -m` command lines are supervised."""


def _command_line() -> tuple[str, list[str]] | None:
    """(module, arguments) of a `python -m flows.<command>` invocation, else None."""
    argv = list(getattr(sys, "orig_argv", []))
    if "-m" not in argv[:-1]:
        return None
    i = argv.index("-m")
    return (argv[i + 1], argv[i + 2:]) if argv[i + 1] in COMMANDS else None


if (command := _command_line()) is not None and not supervised():
    raise SystemExit(supervise(*command))
