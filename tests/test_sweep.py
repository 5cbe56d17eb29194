"""The per-concept sweep of (n, multiplier), and the exclusive feature selection."""

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from saeuron.minicanvas.world import minicanvas_grid
from saeuron.intervention import Edit
from saeuron.minicanvas.data import ALL_STYLES, EVAL_SEED_BASE
from saeuron.minicanvas.render import OBJECTS
from saeuron.diffusion import load_pipeline
from saeuron.sae import SAEConfig, SparseAutoencoder
from saeuron.sampling import SamplingConfig
from saeuron.scoring import ConceptMeans, select_features
from saeuron.sweep import (VAL_SEED_BASE, SweepConfig, sweep_concept, sweep_set,
                           validation_cells)

HOOK = "up_blocks.1.attentions.1"
MC = minicanvas_grid()
FAST = SamplingConfig(num_steps=2, guidance=2.0)
"""Two steps: the tests check the sweep's logic, not the pictures."""
NO_REUSE = SamplingConfig(reuse_unedited=False)


def counted(ua: int, cra: int) -> dict[str, list[int]]:
    """Counts of a judgement of 2 target and 2 other pictures: `ua` of the targets unlearned,
    the others retained, `cra` of 4 right in the other domain."""
    return {"UA": [ua, 2], "IRA": [2, 2], "CRA": [cra, 4], "kept": [2, 2], "CRA_grid": [cra, 4]}


def test_validation_cells_hold_the_concept_and_a_fixed_sample_of_the_others():
    cfg = SweepConfig(n_seeds=2, own=11, others=7)
    val = validation_cells(MC, "object", ["star"], cfg)
    target = val.objects == OBJECTS.index("star")
    assert len(val.prompts) == 2 * (11 + 7) and target.sum() == 2 * 11
    assert all("star" in p for p, t in zip(val.prompts, target) if t)
    assert not any("star" in p for p, t in zip(val.prompts, target) if not t)
    assert set(val.seeds) == {VAL_SEED_BASE, VAL_SEED_BASE + 1}
    assert max(val.seeds) < EVAL_SEED_BASE, "validation never uses evaluation seeds"
    assert validation_cells(MC, "object", ["star"], cfg).prompts == val.prompts, "fixed sample"
    words = [p.split() for p in val.prompts]
    assert all(ALL_STYLES[s] in w or ALL_STYLES[s] == "none" for s, w in zip(val.styles, words))
    again = validation_cells(MC, "object", ["star"], cfg.model_copy(update={"finalist_seeds": 3}),
                             finalists=True)
    assert set(again.seeds) == {VAL_SEED_BASE + 2, VAL_SEED_BASE + 3, VAL_SEED_BASE + 4}
    assert again.prompts == val.prompts[:18] * 3, "the same cells, on further seeds"
    style = validation_cells(MC, "style", ["neon"], SweepConfig(own=4, others=5))
    assert (style.styles == ALL_STYLES.index("neon")).sum() == 4 and len(style.prompts) == 9


def test_sweep_config_refuses_non_removing_multipliers():
    with pytest.raises(ValidationError, match="multipliers must be negative"):
        SweepConfig(multipliers=[-1.0, 2.0])
    assert SweepConfig(multipliers=[0, -1.0]).multipliers == [0, -1.0], "0: zero ablation"
    with pytest.raises(ValidationError, match="top_n candidates must be >= 1"):
        SweepConfig(top_n=[0, 2])


def test_sweep_tries_every_candidate_and_keeps_the_best(fresh_pipeline_dir, judge):
    pipe = load_pipeline(fresh_pipeline_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8))
    cfg = SweepConfig(top_n=[1, 3], multipliers=[-1.0, -20.0], own=3, others=3,
                      stop_at_perfect=False)
    timesteps = [999, 499]

    def edit(n: int, gamma: float, gate: str) -> Edit:
        selected = np.zeros((1, 2, 128), bool)
        selected[0, :, :n] = True
        means = np.random.default_rng(n).random((1, 2, 128)) + 0.5
        return Edit.for_concepts(timesteps, selected, means, [gamma], np.zeros((2, 128)))

    n, gamma, gate, rows = sweep_concept(pipe, judge, MC, sae, HOOK, "style", "neon", edit, cfg, FAST)
    assert gate == "mean" and {r["gate"] for r in rows} == {"mean"}
    assert [(r["top_n"], r["multiplier"]) for r in rows] == [(1, -1.0), (1, -20.0), (3, -1.0),
                                                            (3, -20.0)]
    finals = [r for r in rows if r.get("finalist")]
    assert len(finals) == 3, "the three best of the first judgement are judged again"
    assert all(r["images"] == 6 + 6 for r in finals) and all(r["images"] == 6 for r in rows
                                                             if r not in finals)
    best = max(r["objective"] for r in finals)
    assert any(r["objective"] == best and (r["top_n"], r["multiplier"]) == (n, gamma)
               for r in finals)
    assert all(r["objective"] == pytest.approx((r["UA"] + r["IRA"]) / 2, abs=1e-4) for r in rows)
    assert all(0 <= r["CRA"] <= 1 for r in rows)

    once = cfg.model_copy(update={"finalists": 0})
    n, gamma, _, rows = sweep_concept(pipe, judge, MC, sae, HOOK, "style", "neon", edit, once, FAST)
    assert not any(r.get("finalist") for r in rows)
    best = max(r["objective"] for r in rows)
    assert any(r["objective"] == best and (r["top_n"], r["multiplier"]) == (n, gamma) for r in rows)

    with_cra = cfg.model_copy(update={"objective": ["UA", "IRA", "CRA_grid"]})
    _, _, _, rows = sweep_concept(pipe, judge, MC, sae, HOOK, "style", "neon", edit, with_cra,
                                  FAST)
    assert all(r["objective"] == pytest.approx((r["UA"] + r["IRA"] + r["CRA_grid"]) / 3, abs=1e-4)
               for r in rows)


def test_the_fallback_gate_is_judged_only_where_the_gate_cannot_remove_the_concept(
        shipped_pipeline, judge):
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8))
    cfg = SweepConfig(top_n=[1], multipliers=[-1.0], own=3, others=3, finalists=0)

    def edit(n: int, gamma: float, gate: str) -> Edit:  # selects nothing: neon stays drawn
        return Edit.for_concepts([999], np.zeros((1, 1, 128), bool), np.ones((1, 1, 128)),
                                 [gamma], np.zeros((1, 128)))

    n, gamma, gate, rows = sweep_concept(shipped_pipeline, judge, MC, sae, HOOK, "style", "neon",
                                         edit, cfg, SamplingConfig(), "detect")
    assert [r["gate"] for r in rows] == ["detect", "mean"]
    assert rows[0]["UA"] < cfg.fallback_below
    assert gate == "detect", "a tie keeps the sweep's own gate"
    never = cfg.model_copy(update={"fallback_gate": None})
    _, _, _, rows = sweep_concept(shipped_pipeline, judge, MC, sae, HOOK, "style", "neon", edit,
                                  never, SamplingConfig(), "detect")
    assert [r["gate"] for r in rows] == ["detect"]


@pytest.mark.parametrize("first_perfect, finalist_fails, judged", [
    ({(1, -10.0), (3, -3.0)}, set(), 4),       # confirmed at once ((3, -3) shared its chunk)
    ({(1, -10.0), (3, -3.0)}, {(1, -10.0)}, 5),                # the second finalist confirmed
    ({(1, -10.0), (3, -3.0), (3, -10.0)}, {(1, -10.0), (3, -3.0)}, 5),  # finalists known
    (set(), set(), 6),                                         # nothing perfect: full sweep
])
def test_the_sweep_stops_once_its_choice_is_known_and_chooses_as_the_full_sweep(
        monkeypatch, first_perfect, finalist_fails, judged):
    import saeuron.sweep as sweep

    cfg = SweepConfig(top_n=[1, 3], multipliers=[-3.0, -10.0], own=2, others=2, finalists=2,
                      finalist_seeds=1, objective=["UA", "IRA", "CRA_grid"], fallback_gate=None)
    calls = []

    def judge(pipe, judge, sae, hook, domain, concepts, edits, val, cfg, sampling):
        later = val.seeds[0] > VAL_SEED_BASE
        out = []
        for edit in edits:
            calls.append((edit, later))
            right = edit in first_perfect and not (later and edit in finalist_fails)
            score = sum(edit) % 2  # imperfect candidates differ, so the choice is not a tie
            out.append(sweep._metrics(counted(2 if right else 1 - score, 4 if right else 3), cfg))
        return out

    monkeypatch.setattr(sweep, "judge_candidates", judge)
    edits = lambda n, gamma, gate: (n, gamma)  # noqa: E731 (the fake judge reads the candidate)
    # the fake edits have no detector to reuse the unedited pictures by
    choice = sweep_concept(None, None, MC, None, HOOK, "style", "neon", edits, cfg, NO_REUSE,
                           "detect")
    assert len(calls) == judged, calls
    assert len(set(calls)) == len(calls), "no picture is judged twice"
    calls.clear()
    full = sweep_concept(None, None, MC, None, HOOK, "style", "neon", edits,
                         cfg.model_copy(update={"stop_at_perfect": False}), NO_REUSE, "detect")
    assert len(calls) == 4 + 2, "the full sweep judges every candidate, then two finalists"
    assert choice[:3] == full[:3]
    finals = {(r["top_n"], r["multiplier"]): r["objective"] for r in choice[3] if r.get("finalist")}
    assert finals == {(r["top_n"], r["multiplier"]): r["objective"] for r in full[3]
                      if r.get("finalist") and (r["top_n"], r["multiplier"]) in finals}


def test_the_stronger_preference_judges_the_strongest_first_and_keeps_it_on_ties(monkeypatch):
    import saeuron.sweep as sweep

    cfg = SweepConfig(top_n=[1, 3], multipliers=[-3.0, -10.0], own=2, others=2, finalists=2,
                      prefer="stronger")
    assert cfg.candidates() == [(3, -10.0), (3, -3.0), (1, -10.0), (1, -3.0)]
    calls = []

    def judge(pipe, judge, sae, hook, domain, concepts, edits, val, cfg, sampling):  # all but
                                                                        # the weakest
        calls.extend(edits)                                             # are perfect
        return [sweep._metrics(counted(1 if e == (1, -3.0) else 2, 4), cfg) for e in edits]

    monkeypatch.setattr(sweep, "judge_candidates", judge)
    edits = lambda n, gamma, gate: (n, gamma)  # noqa: E731 (the fake judge reads the candidate)
    assert sweep_concept(None, None, MC, None, HOOK, "object", "star", edits, cfg,
                         NO_REUSE)[:2] == (3, -10.0)
    assert calls == [(3, -10.0), (3, -10.0)], "the strongest, then its finalist judgement"
    full = cfg.model_copy(update={"stop_at_perfect": False})
    assert sweep_concept(None, None, MC, None, HOOK, "object", "star", edits, full,
                         NO_REUSE)[:2] == (3, -10.0)
    weaker = full.model_copy(update={"prefer": "weaker"})
    assert sweep_concept(None, None, MC, None, HOOK, "object", "star", edits, weaker,
                         NO_REUSE)[:2] == (1, -10.0)


def test_exclusive_selection_keeps_only_features_the_concept_leads():
    sums = np.array([[[5.0, 1.0, 2.0]], [[4.0, 0.1, 3.0]]])  # 2 concepts, 1 timestep, 3 features
    m = ConceptMeans(concepts=["a", "b"], timesteps=[1], sums=sums, counts=np.array([1, 1]))
    assert m.exclusive().tolist() == [[[True, True, False]], [[False, False, True]]]
    scores = np.array([[[0.9, 0.1, 0.5]], [[0.8, 0.0, 0.2]]])
    chosen = select_features(scores, top_n=1, eligible=m.exclusive())
    assert chosen.tolist() == [[[True, False, False]], [[False, False, True]]]
    assert select_features(scores, top_n=1)[1].tolist() == [[True, False, False]]


def test_a_set_has_its_own_validation_cells_and_scale_sweep(fresh_pipeline_dir, judge):
    val = validation_cells(MC, "style", ["neon", "pop"], SweepConfig(own=10, others=4))
    target = np.isin(val.styles, [ALL_STYLES.index("neon"), ALL_STYLES.index("pop")])
    assert target.sum() == 10 and len(val.prompts) == 14
    assert all(("neon" in p) or ("pop" in p) for p, t in zip(val.prompts, target) if t)
    assert not any(("neon" in p) or ("pop" in p) for p, t in zip(val.prompts, target) if not t)

    pipe = load_pipeline(fresh_pipeline_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8))
    selected = np.zeros((2, 2, 128), bool)
    selected[:, :, :4] = True
    means = np.random.default_rng(0).random((2, 2, 128)) + 0.5
    scales = []

    def edit(scale: float) -> Edit:
        scales.append(scale)
        return Edit.for_concepts([999, 499], selected, means, [-20.0 * scale, -5.0 * scale],
                                 np.zeros((2, 128)))

    cfg = SweepConfig(own=3, others=3)
    best, rows = sweep_set(pipe, judge, MC, sae, HOOK, "style", ["neon", "pop"], edit, [1.0, 0.1],
                           cfg, FAST)
    assert scales[:2] == [1.0, 0.1] and [r["scale"] for r in rows] == [1.0, 0.1]
    assert sorted(scales[2:]) == [0.1, 1.0], "both scales are finalists, judged again"
    top = max(r["objective"] for r in rows)
    assert best == max(r["scale"] for r in rows if r["objective"] == top)
    assert rows[0]["concepts"] == "neon+pop"


def test_the_sweep_counts_its_pictures_as_the_report_does(fresh_pipeline_dir, judge):
    from saeuron.edited import sample_edited
    from saeuron.metrics import Judged, unlearning_metrics
    from saeuron.sweep import judge_candidates

    pipe = load_pipeline(fresh_pipeline_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=64, expansion_factor=2, k=8))
    cfg = SweepConfig(own=3, others=8)
    val = validation_cells(MC, "style", ["neon"], cfg)
    selected = np.zeros((1, 2, 128), bool)
    selected[0, :, :4] = True
    edit = Edit.for_concepts([999, 499], selected, np.ones((1, 2, 128)), [-10.0],
                             np.zeros((2, 128)))
    row, twice = judge_candidates(pipe, judge, sae, HOOK, "style", ["neon"], [edit, edit], val, cfg,
                                  FAST)
    assert twice == row, "two groups of pictures under the same edit are judged alike"
    images = sample_edited(pipe, HOOK, sae, edit, val.prompts, val.seeds, **FAST.options())
    style, obj = judge.predict(images)
    report = unlearning_metrics(Judged(val.styles, val.objects, style, obj, ALL_STYLES, OBJECTS),
                                "style", ["neon"])
    assert {m: row[m] for m in report if row[m] is not None} == {
        m: round(v, 4) for m, v in report.items() if v == v}
    assert row["images"] == len(val.prompts)
