"""What every stage flow does around its work: the cache check, and the manifest at the end."""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from prefect_dask import DaskTaskRunner

from saeuron.run import RunConfig
from storage.layout import RunLayout, fingerprint

T = TypeVar("T")

LIBRARY = ("saeuron", "storage", "tasks")
"""Packages whose modules are followed when hashing a stage's code."""


def layout_of(run: RunConfig) -> RunLayout:
    return RunLayout(root=run.root, stores=run.stores)


def shard_runner(run: RunConfig) -> TaskRunner:
    """The task runner of a stage's shards: the run's Dask cluster, else `run.shards` threads."""
    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    return ThreadPoolTaskRunner(max_workers=run.shards)


def holds_root(body: Callable[..., T]) -> Callable[..., T]:
    """A stage flow that holds its run root while it runs (RunLayout.hold), so that a stage run
    from a deployment, too, refuses a root another run is using; reentrant, so the pipeline
    flow's own hold covers its subflows."""
    signature = inspect.signature(body)

    @functools.wraps(body)
    def held(*args: Any, **kwargs: Any) -> T:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        with layout_of(bound.arguments["run"]).hold():
            return body(*args, **kwargs)

    # Prefect resolves the parameters' annotations in the function's module: give it them resolved
    held.__signature__ = inspect.signature(body, eval_str=True)  # type: ignore[attr-defined]
    return held


def cached(layout: RunLayout, stage: str, fp: str, force: bool) -> State | None:
    """A Completed state named "Cached" carrying the manifest, if the stage is complete for
    `fp` and not forced; the flow returns it, so the UI shows the run as cached."""
    manifest = None if force else layout.complete(stage, fp)
    if manifest is None:
        return None
    get_run_logger().info(f"{stage}: cached, inputs unchanged since {manifest['finished']} "
                          f"(fingerprint {fp}); nothing to do")
    scalars = {k: v for k, v in manifest["metrics"].items() if isinstance(v, (int, float, str))}
    create_table_artifact([{"stage": stage, "state": "cached", "fingerprint": fp, **scalars}],
                          key=f"{stage}-summary",
                          description=f"{stage} (cached)")
    return Completed(name="Cached", message=f"{stage} cached ({fp})", data=manifest)


def code_fingerprint(stage: str) -> str:
    """Hash of the code a stage runs: its flow module, its task module and every library module
    the task imports, transitively. A changed computation then reruns the stage (and what depends
    on it) as a changed configuration does; comments and layout do not count (syntax trees are
    hashed). The harvest's stores record the package version instead (HarvestConfig)."""
    return fingerprint(modules_hash([f"flows.{stage}"], ()),
                       modules_hash([f"tasks.{stage}"], LIBRARY))


def modules_hash(modules: list[str], follow: tuple[str, ...]) -> str:
    """Hash of the syntax trees of `modules` and of the modules of the `follow` packages they
    import, transitively."""
    trees: dict[str, str] = {}
    todo = list(modules)
    while todo:
        name = todo.pop()
        if name in trees or (path := _source(name)) is None:
            continue
        tree, dumped = _parse(path.read_text())
        trees[name] = hashlib.sha256(dumped.encode()).hexdigest()
        todo += [n for n in _imported(tree) if n.split(".")[0] in follow]
    return fingerprint(sorted(trees.items()))


_AST = threading.Lock()


def _parse(source: str, attempts: int = 3) -> tuple[ast.Module, str]:
    """The syntax tree and its dump. CPython 3.11 (seen on 3.11.7) keeps the AST constructor's
    recursion depth per interpreter, not per thread, so parsing in two threads at once (a
    Prefect worker's) can raise a spurious SystemError ("AST constructor recursion depth
    mismatch"): ours are serialised, and one that still collides is parsed again."""
    for _ in range(attempts - 1):
        try:
            return _parsed(source)
        except SystemError:
            continue
    return _parsed(source)


def _parsed(source: str) -> tuple[ast.Module, str]:
    with _AST:
        tree = ast.parse(source)
        return tree, ast.dump(tree)


def _imported(tree: ast.Module) -> list[str]:
    """Absolute names a module imports (`from a import b` gives a and a.b: b may be a module)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def _source(name: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # `a.b` where b is a name inside module a
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)
