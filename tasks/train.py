"""SAE training task: one hook's SAE, streamed from the activation store, resumable."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact

from tasks import artifact_key

from saeuron.sae_train import SAETrainConfig, SAETrainer
from storage.activations import ActivationStore


@task(name="train-sae", task_run_name="train-sae-{hook}")
def train_sae(store_url: str, config: SAETrainConfig, hook: str, out_dir: str) -> dict:
    """Train (or resume) the SAE of `hook`; save it; return held-out metrics."""
    logger = get_run_logger()
    folder = Path(out_dir) / hook
    trainer = SAETrainer(ActivationStore.open(store_url), config, hook, folder, log=logger.info)
    progress = create_progress_artifact(100.0 * trainer.step / trainer.total_steps,
                                        key=artifact_key("train", hook, "progress"),
                                        description=f"SAE training of {hook}")

    def report(step: int, total: int, record: dict) -> None:
        update_progress_artifact(progress, 100.0 * step / total)
        logger.info(f"step {step}/{total} fvu {record['fvu']:.4f} l0 {record['l0']:.1f} "
                    f"dead {record['dead_fraction']:.3f} auxk {record['auxk']:.4f}")

    sae = trainer.run(progress=report)
    sae.save(folder)
    metrics = trainer.evaluate() if len(trainer.held) else None
    result = {"hook": hook, "latents": sae.cfg.n_latents, "k": sae.cfg.k,
              "steps": trainer.step, "vectors_per_epoch": trainer.stream.vectors_per_epoch}
    if metrics:
        result.update({f"heldout_{k}": v for k, v in metrics.as_dict().items()})
    logger.info(f"SAE of {hook} saved to {folder}: {result}")
    return result
