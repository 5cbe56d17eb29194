#!/usr/bin/env python3
"""Set up the project's virtual environment and run its jobs. Needs only Python 3.11+.

    python3 dev.py run     # set up, then run the whole pipeline on MiniCanvas (flows/launch.py)
    python3 dev.py test    # set up, then run the test suite
    python3 dev.py setup   # set up only

The environment lives in .venv (or $SAEURON_VENV). Torch is installed first as $SAEURON_TORCH
(default torch==2.13.0, the CPU build on this project's machines), so that no multi-GB CUDA
build is pulled in on a CPU machine; set it to your CUDA build on a GPU machine.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = Path(os.environ.get("SAEURON_VENV", ROOT / ".venv"))
TORCH = os.environ.get("SAEURON_TORCH", "torch==2.13.0")
PY = VENV / "bin" / "python"


def sh(*cmd: str | os.PathLike) -> None:
    print("+", " ".join(map(str, cmd)), flush=True)
    subprocess.run([str(c) for c in cmd], cwd=ROOT, check=True)


def setup() -> None:
    """Create the venv and install the project, again only when pyproject.toml changed."""
    stamp = VENV / ".saeuron-installed"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + TORCH.encode()).hexdigest()
    if stamp.is_file() and stamp.read_text() == want and PY.exists():
        return
    if not PY.exists():
        venv.create(VENV, with_pip=True)
    sh(PY, "-m", "pip", "install", "-q", "--upgrade", "pip")
    sh(PY, "-m", "pip", "install", "-q", TORCH)
    sh(PY, "-m", "pip", "install", "-q", "-e", ".[dev]")
    stamp.write_text(want)


JOBS = {
    "setup": [],
    "run": ["-m", "flows.launch", "--config", "configs/pipeline.yaml"],
    "test": ["-m", "pytest", "-q"],
}


def main() -> None:
    job, *extra = sys.argv[1:] or ["run"]
    if job not in JOBS:
        sys.exit(f"unknown job {job!r}; choose one of {', '.join(JOBS)}")
    setup()
    if JOBS[job]:
        os.chdir(ROOT)
        os.execv(PY, [str(PY), *JOBS[job], *extra])


if __name__ == "__main__":
    main()
