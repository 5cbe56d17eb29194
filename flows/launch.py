"""The pipeline's command line: `python -m flows.launch` (what `python3 dev.py run` calls) takes
the pipeline's options and, when nothing the result depends on changed since
the last command on that root finished, prints that result again within a second or two,
without importing torch or starting Prefect. Otherwise it runs the pipeline flow, whose stages
are each cached as always, and records the result.

    python -m flows.launch [--config configs/pipeline.yaml] [--root runs/x] [--force score]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any


from saeuron.config import load_yaml
from storage.layout import DEFAULT_ROOT, STAGES, RunLayout, inputs_digest

PROJECT = Path(__file__).resolve().parent.parent
CODE = [PROJECT / package for package in ("flows", "tasks", "saeuron", "storage")]
"""What a result depends on besides its configuration: the code and the shipped weights."""


def parser() -> argparse.ArgumentParser:
    out = argparse.ArgumentParser(prog="python -m flows.launch", description=__doc__.split("\n\n")[0])
    out.add_argument("--config", help="YAML file of PipelineConfig options")
    out.add_argument("--root", help="local folder of the run (overrides run.root)")
    out.add_argument("--force", action="append", choices=STAGES, default=[],
                     help="rerun this stage even if cached (repeatable)")
    return out


def _paths(data: Any, base: Path = Path("."), seen: set[Path] | None = None) -> list[Path]:
    """Existing files and folders named anywhere in a configuration (a model, a world file),
    and, through a YAML file it names (a world file), those named there (relative to it)."""
    seen = set() if seen is None else seen
    if isinstance(data, dict):
        return [p for v in data.values() for p in _paths(v, base, seen)]
    if isinstance(data, list):
        return [p for v in data for p in _paths(v, base, seen)]
    if not isinstance(data, str) or not data or not os.path.exists(base / data):
        return []
    path = (base / data).resolve()
    if path in seen:
        return []
    seen.add(path)
    inner = (_paths(load_yaml(path), path.parent, seen)
             if path.suffix in (".yaml", ".yml") and path.is_file() else [])
    return [path, *inner]


def refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def digest_and_root(args: argparse.Namespace) -> tuple[str, str]:
    """The inputs digest of a command (--force aside: a forced run records what an unforced
    one would replay) and its run root; a configuration that is no YAML mapping is a
    ValueError naming the file and where."""
    data = load_yaml(args.config) if args.config else {}
    text = Path(args.config).read_text() if args.config else ""
    run = data.get("run")
    root = args.root or (run.get("root") if isinstance(run, dict) else None) or DEFAULT_ROOT
    named = [p for p in _paths(data) if p.resolve() != Path(root).resolve()]
    command = {"config": text, "root": str(Path(root).resolve())}
    return inputs_digest(command, CODE + named), root


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        known = digest_and_root(args)
    except (ValueError, OSError) as error:
        refuse(str(error))
    if Path(known[1]).exists() and not Path(known[1]).is_dir():
        refuse(f"the run root {known[1]} is a file; give a folder (--root)")
    if not args.force and (record := RunLayout(root=known[1]).replay(known[0])):
        print(f"Nothing changed since this command last finished on {known[1]} "
              f"({record['finished']}): every stage is cached, so its result is shown again "
              "without starting Prefect (--force STAGE reruns one).")
        print(record["result"]["text"])
        return
    result = run_command(args)
    RunLayout(root=known[1]).record_pipeline(known[0], result)


def run_command(args: argparse.Namespace) -> dict:
    """The pipeline flow for the parsed options; prints and returns its result, with the
    printed summary as "text". (Its imports start torch and Prefect: only here, not for a
    replayed result.)"""
    from flows.cli import quiet_libraries, reported
    from flows.pipeline import pipeline
    from saeuron.report import run_summary_text
    from saeuron.run import PipelineConfig, check_pipeline

    quiet_libraries()
    with reported(None):
        config = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
        if args.root:
            config = config.model_copy(update={"run": config.run.model_copy(update={"root": args.root})})
        if args.force:
            config = config.model_copy(update={"force": sorted(set(config.force) | set(args.force))})
        check_pipeline(config)
    with reported(config.run.root), RunLayout(root=config.run.root).hold():
        result = pipeline(config)  # a busy root is refused before Prefect starts
    result["text"] = run_summary_text(result)
    print(result["text"])
    return result


if __name__ == "__main__":
    main()
