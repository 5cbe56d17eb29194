"""What every stage flow does around its work: the cache check, and the manifest at the end."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, State

from saeuron.run import RunConfig
from storage.run import RunLayout


def layout_of(run: RunConfig) -> RunLayout:
    return RunLayout(root=run.root, stores=run.stores)


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
