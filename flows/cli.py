"""Command lines of the flows: typed configs from YAML, one clear message for bad input."""

from __future__ import annotations

import argparse
import errno
import shutil
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pydantic import ValidationError

from saeuron.config import Config, load_yaml
from flows.stage import layout_of
from saeuron.run import UPSTREAM, PipelineConfig, RunConfig
from storage.activations import StoreMismatchError
from storage.layout import STAGES, RootBusyError

USER_ERRORS = (ValidationError, ValueError, FileNotFoundError, KeyError, StoreMismatchError,
               RootBusyError)


def quiet_libraries() -> None:
    """No per-load progress bars from transformers / diffusers in a run's output."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    diffusers_logging.disable_progress_bar()


def explain(error: Exception) -> str:
    """One readable message for a configuration error (pydantic's lists every bad field)."""
    if isinstance(error, ValidationError):
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']}{_got(e.get('input'))}"
                 for e in error.errors()]
        return f"invalid {error.title} configuration:\n" + "\n".join(lines)
    return str(error.args[0]) if error.args else repr(error)


def _got(value: Any) -> str:
    """The offending value, unless it is a whole section of the configuration."""
    text = repr(value)
    return f" (got {text})" if len(text) <= 120 and not isinstance(value, dict) else ""


STAGE_NOTE = "in the {} stage"
"""Added to an exception (add_note) by the flow that saw a stage raise it."""


def stage_of(error: BaseException, default: str | None) -> str | None:
    for note in getattr(error, "__notes__", []):
        for stage in STAGES:
            if note == STAGE_NOTE.format(stage):
                return stage
    return default


def _chain(error: BaseException) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def disk_full(error: BaseException, root: str) -> str | None:
    """The message for an error that a full disk caused (ENOSPC anywhere in its chain, or a
    failed write where the run root's disk has under 1 MiB left), else None."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        return None
    nospace = [e for e in _chain(error) if isinstance(e, OSError) and e.errno == errno.ENOSPC]
    if not nospace and not (free < 1 << 20 and isinstance(error, (OSError, RuntimeError))):
        return None
    where = next((e.filename for e in nospace if e.filename), None)
    used = sum(f.stat().st_size for f in Path(root).rglob("*") if f.is_file())
    return (f"no space left on the disk of the run root {root} ({free / 2**20:.1f} MiB free)"
            + (f" while writing {where}" if where else "")
            + f"; the run root holds {used / 2**20:.1f} MiB so far. Free some space (or choose a "
            "root on a larger disk, --root) and run the same command again: the work finished "
            "before is kept and the run resumes from there.")


@contextmanager
def reported(root: str | None, stage: str | None = None) -> Iterator[None]:
    """Every failure of a command as one message: a user error (bad input, a busy root, a
    damaged store) or a full disk exits 2; anything else is internal, exit 1, with its
    traceback kept in <root>/logs/ for a bug report."""
    try:
        yield
    except Exception as error:
        where = stage_of(error, stage)
        prefix = f"error: the {where} stage: " if where else "error: "
        if root and (full := disk_full(error, root)):
            print(prefix + full, file=sys.stderr)
            sys.exit(2)
        if isinstance(error, USER_ERRORS):
            print(prefix + explain(error), file=sys.stderr)
            sys.exit(2)
        text = "".join(traceback.format_exception(error))
        log = None
        if root:
            try:
                log = Path(root) / "logs" / f"error-{time.strftime('%Y%m%dT%H%M%S')}.txt"
                log.parent.mkdir(parents=True, exist_ok=True)
                log.write_text(text)
            except OSError:
                log = None
        print(f"{prefix}internal error: {type(error).__name__}: {error}\n"
              + (f"  the traceback is in {log}" if log else text)
              + "\n  Work finished before it is kept: run the same command again to resume; "
              "an error that repeats is a bug to report, with that traceback.", file=sys.stderr)
        sys.exit(1)


def run_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=doc)
    parser.add_argument("--config", help="YAML file of the stage's options, or a pipeline "
                        "configuration (configs/pipeline.yaml) to take the stage's section from")
    parser.add_argument("--root", help="local folder of the run (default: the pipeline "
                        "configuration's, else runs/default)")
    parser.add_argument("--stores", help="folder or fsspec URL of the Zarr stores (default: root)")
    parser.add_argument("--dask-address", help="dask.distributed scheduler to compute on")
    parser.add_argument("--shards", type=int, help="harvest shards run in parallel")
    parser.add_argument("--force", action="store_true", help="rerun even if cached")
    return parser


def load_stage_config(name: str, config_cls: type[Config],
                      path: str | None) -> tuple[Config, RunConfig, dict]:
    """A stage's options from a stage YAML, or from a pipeline YAML's section of that name
    (then with the pipeline's run settings and PipelineConfig.stage_options)."""
    if path is None:
        return config_cls(), RunConfig(), {}
    data = load_yaml(path)
    if "run" in data or name in data:
        pipeline = PipelineConfig.model_validate(data)
        return getattr(pipeline, name), pipeline.run, pipeline.stage_options(name)
    return config_cls.from_yaml(path), RunConfig(), {}


def stage_main(flow: Callable, argv: list[str] | None = None) -> None:
    """`python -m flows.<stage>`: one stage (`flow`) on a run root whose upstream stages are
    done, its options from the stage's section of a configuration file."""
    quiet_libraries()
    name = flow.name
    config_cls = PipelineConfig.model_fields[name].annotation
    parser = run_parser(f"python -m flows.{name}", flow.__doc__)
    if name == "harvest":
        parser.add_argument("--score-seeds", type=int, help="seeds per prompt of the scoring "
                            "split (default 1, or the pipeline configuration's)")
    args = parser.parse_args(argv)
    with reported(None, name):
        config, run, options = load_stage_config(name, config_cls, args.config)
        given = {"root": args.root, "stores": args.stores, "dask_address": args.dask_address,
                 "shards": args.shards}
        run = run.model_copy(update={k: v for k, v in given.items() if v is not None})
    with reported(run.root, name), layout_of(run).hold():
        for stage in UPSTREAM[name]:
            layout_of(run).upstream(stage, name)
        if getattr(args, "score_seeds", None) is not None:
            options["score_seeds"] = args.score_seeds
        result = flow(config, run, force=args.force, **options)
    print({k: result[k] for k in ("stage", "fingerprint", "outputs", "metrics")})


def benchmark_main(flow: Callable, argv: list[str] | None = None) -> None:
    """`python -m flows.benchmark`: the benchmark (its options from --benchmark) on the run of
    a pipeline configuration (--config) whose evaluate stage is done."""
    from saeuron.benchmark import BenchmarkConfig

    quiet_libraries()
    parser = run_parser("python -m flows.benchmark", flow.__doc__)
    parser.add_argument("--benchmark", help="YAML file of the benchmark's options "
                        "(saeuron.benchmark.BenchmarkConfig; default: every method)")
    args = parser.parse_args(argv)
    with reported(None, "benchmark"):
        pipeline = PipelineConfig.from_yaml(args.config) if args.config else PipelineConfig()
        run = pipeline.run.model_copy(update={k: v for k, v in {
            "root": args.root, "stores": args.stores}.items() if v is not None})
        config = BenchmarkConfig.from_yaml(args.benchmark) if args.benchmark else BenchmarkConfig()
        options = pipeline.benchmark_options()
    with reported(run.root, "benchmark"), layout_of(run).hold():
        result = flow(config, run, force=args.force, **options)
    print({k: result[k] for k in ("stage", "fingerprint", "outputs")})
    print(Path(result["metrics"]["report"]).read_text().split("\n\n<img")[0][:6000])
