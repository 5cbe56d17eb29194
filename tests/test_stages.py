"""The stages in miniature, through their Prefect flows: harvest -> train -> score -> evaluate."""

import json

from saeuron.harvest import HarvestConfig
from saeuron.sae_train import SAETrainConfig
from saeuron.scoring import ScoreConfig
from saeuron.unlearning import EvaluateConfig

HOOK = "up_blocks.1.attentions.1"


def test_stages_chain_through_their_flows(fresh_pipeline_dir, tmp_path, prefect_api):
    from flows.evaluate import evaluate
    from flows.harvest import harvest
    from flows.score import score
    from flows.train import train

    small = dict(model=str(fresh_pipeline_dir), objects=["circle", "star", "moon"],
                 styles=["sunset", "pop", "none"], templates=1, num_steps=3, samples_per_chunk=6)
    acts = str(tmp_path / "harvest.zarr")
    held_out = str(tmp_path / "score.zarr")
    harvest(HarvestConfig(**small, n_seeds=2), acts)
    harvest(HarvestConfig(**small, n_seeds=2, split="score"), held_out)
    sae_dir = str(tmp_path / "sae")
    metrics = train(SAETrainConfig(expansion_factor=2, k=4, aux_k=8, batch_size=256, epochs=2,
                                   holdout=0.2, buffer_size=512), acts, sae_dir)
    assert 0 < metrics[0]["heldout_fvu"] < 1.5
    features = str(tmp_path / "features.zarr")
    summary = score(ScoreConfig(hook=HOOK, top_n=2), held_out, sae_dir, features)
    assert summary["style_concepts"] == 3 and summary["object_concepts"] == 3
    out = tmp_path / "eval"
    rows = evaluate(EvaluateConfig(model=str(fresh_pipeline_dir), styles=["sunset"],
                                   objects=["star"], style_sets=[["sunset", "pop"]],
                                   num_steps=2, guidance=2.0),
                    sae_dir, features, str(out))
    assert [r["target"] for r in rows] == ["baseline", "sunset", "star", "sunset+pop"]
    assert all(0 <= r[m] <= 1 for r in rows[1:] for m in ("UA", "IRA", "CRA"))
    report = (out / "report.md").read_text()
    assert "| sunset |" in report and "![star](star/grid.png)" in report
    assert (out / "sunset" / "grid.png").is_file()
    assert json.loads(json.dumps(rows))  # rows are plain data, as the table artifact needs
