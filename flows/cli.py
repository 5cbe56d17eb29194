"""Command lines of the flows: typed configs from YAML, one clear message for bad input."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from pydantic import ValidationError

from saeuron.config import Config, load_yaml
from flows.stage import layout_of
from saeuron.run import UPSTREAM, PipelineConfig, RunConfig
from storage.activations import StoreMismatchError
from storage.run import RootBusyError

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
        lines = [f"  {'.'.join(map(str, e['loc'])) or '(config)'}: {e['msg']} (got {e.get('input')!r})"
                 for e in error.errors()]
        return f"invalid {error.title} configuration:\n" + "\n".join(lines)
    return str(error.args[0]) if error.args else repr(error)


def fail(error: Exception) -> None:
    print(f"error: {explain(error)}", file=sys.stderr)
    sys.exit(2)


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
    (then with the pipeline's run settings and, for harvest, its score_seeds)."""
    if path is None:
        return config_cls(), RunConfig(), {}
    data = load_yaml(path)
    if "run" in data or name in data:
        pipeline = PipelineConfig.model_validate(data)
        options = {"score_seeds": pipeline.score_seeds} if name == "harvest" else {}
        return getattr(pipeline, name), pipeline.run, options
    return config_cls.from_yaml(path), RunConfig(), {}


def run_stage_cli(name: str, flow: Callable, config_cls: type[Config], argv: list[str] | None,
                  extra: Callable[[argparse.ArgumentParser], Any] | None = None,
                  kwargs: Callable[[argparse.Namespace], dict] | None = None) -> None:
    """`python -m flows.<name>`: one stage on a run root whose upstream stages are done."""
    quiet_libraries()
    parser = run_parser(f"python -m flows.{name}", flow.__doc__)
    if extra:
        extra(parser)
    args = parser.parse_args(argv)
    try:
        config, run, options = load_stage_config(name, config_cls, args.config)
        given = {"root": args.root, "stores": args.stores, "dask_address": args.dask_address,
                 "shards": args.shards}
        run = run.model_copy(update={k: v for k, v in given.items() if v is not None})
        with layout_of(run).hold():
            for stage in UPSTREAM[name]:
                layout_of(run).upstream(stage, name)
            result = flow(config, run, force=args.force,
                          **(options | (kwargs(args) if kwargs else {})))
    except USER_ERRORS as error:
        fail(error)
    print({k: result[k] for k in ("stage", "fingerprint", "outputs", "metrics")})
