"""A command line's process split in two, so that a crash cannot leave a Prefect server behind.

The command runs in a child process, which starts Prefect's temporary server when it first
needs one, as always. This process only waits: it is the child's subreaper (Linux), so a server
the child leaves behind (a segmentation fault, an out-of-memory kill: no atexit ran) becomes
its own child, and is stopped once the command has ended. A child that dies of a signal is one
message, exit 1. The child dies with this process. Elsewhere than Linux, the command runs in
this process as before.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

CHILD = "SAEURON_SUPERVISED"
"""Set in the child's environment: it runs the command instead of supervising it."""

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36


def _prctl(option: int, value: int) -> bool:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(option, value) == 0
    except (OSError, AttributeError):
        return False


def supervised() -> bool:
    """True where the command should run in this process: in the child, or where no
    subreaper can be had (not Linux)."""
    return CHILD in os.environ or not sys.platform.startswith("linux")


def supervise(module: str, argv: list[str]) -> int:
    """Run `python -m module *argv` as a child; stop whatever it leaves running; its exit code."""
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    child = subprocess.Popen([sys.executable, "-m", module, *argv], env={**os.environ, CHILD: "1"},
                             preexec_fn=lambda: _prctl(PR_SET_PDEATHSIG, signal.SIGKILL))
    # SIGTERM is passed on; Ctrl-C reaches the child from the terminal itself
    signal.signal(signal.SIGTERM, lambda signum, _: child.send_signal(signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    rc = child.wait()
    _stop(_children())
    if rc < 0:
        name = signal.Signals(-rc).name
        what = ("was stopped" if -rc in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL)
                else "crashed; a crash that repeats is a bug to report, with the output above")
        print(f"error: the {module} process {what} ({name}). Work finished before it is kept: "
              "run the same command again to resume.", file=sys.stderr)
        return 1
    return rc


def _children() -> list[int]:
    """Processes whose parent is this one (after the child ended: what it left behind)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.append(int(entry.name))
    return found


def _stop(pids: list[int], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; reaped either way."""
    deadline = time.monotonic() + grace
    try:
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        for pid in pids:
            while os.waitpid(pid, os.WNOHANG) == (0, 0):
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.05)
    except (ProcessLookupError, ChildProcessError):  # ended (and reaped) meanwhile
        pass
