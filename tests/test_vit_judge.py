"""The UnlearnCanvas judge: timm ViT state dicts run as transformers' ViT, in the evaluation."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from saeuron.grid import unlearncanvas_grid
from saeuron.vit_judge import ViTJudge, ViTJudgeConfig, load_timm_vit

HIDDEN, DEPTH, HEADS, PATCH, SIZE = 32, 2, 2, 16, 32


def timm_state(classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict under timm's VisionTransformer key names (no timm needed)."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2, mean: float = 0.0) -> torch.Tensor:
        return mean + scale * torch.randn(shape, generator=g)

    d, n = HIDDEN, (SIZE // PATCH) ** 2 + 1
    state = {"cls_token": rand(1, 1, d, scale=0.5), "pos_embed": rand(1, n, d, scale=0.5),
             "patch_embed.proj.weight": rand(d, 3, PATCH, PATCH, scale=0.05),
             "patch_embed.proj.bias": rand(d), "norm.weight": rand(d, mean=1.0),
             "norm.bias": rand(d), "head.weight": rand(classes, d), "head.bias": rand(classes)}
    for i in range(DEPTH):
        shapes = {"norm1": (d,), "attn.qkv": (3 * d, d), "attn.proj": (d, d), "norm2": (d,),
                  "mlp.fc1": (4 * d, d), "mlp.fc2": (d, 4 * d)}
        for name, shape in shapes.items():
            state[f"blocks.{i}.{name}.weight"] = rand(*shape, mean=1.0 if "norm" in name else 0.0)
            state[f"blocks.{i}.{name}.bias"] = rand(shape[0])
    return state


def timm_forward(s: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """timm's ViT forward, written out: patch conv, class token, pre-norm blocks with a fused
    qkv (reshape to (3, heads, head_dim) per token), final norm, the class token into the head."""
    def norm(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(h, (HIDDEN,), s[f"{name}.weight"], s[f"{name}.bias"], eps=1e-6)

    def linear(h: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(h, s[f"{name}.weight"], s[f"{name}.bias"])

    h = F.conv2d(x, s["patch_embed.proj.weight"], s["patch_embed.proj.bias"], stride=PATCH)
    h = h.flatten(2).transpose(1, 2)
    b, n = len(x), h.shape[1] + 1
    h = torch.cat([s["cls_token"].expand(b, -1, -1), h], 1) + s["pos_embed"]
    for i in range(DEPTH):
        p = f"blocks.{i}"
        q, k, v = linear(norm(h, f"{p}.norm1"), f"{p}.attn.qkv").reshape(
            b, n, 3, HEADS, HIDDEN // HEADS).permute(2, 0, 3, 1, 4)
        attn = ((q @ k.transpose(-2, -1)) * (HIDDEN // HEADS) ** -0.5).softmax(-1)
        h = h + linear((attn @ v).transpose(1, 2).reshape(b, n, HIDDEN), f"{p}.attn.proj")
        h = h + linear(F.gelu(linear(norm(h, f"{p}.norm2"), f"{p}.mlp.fc1")), f"{p}.mlp.fc2")
    return linear(norm(h, "norm")[:, 0], "head")


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    """A 51-class style and a 20-object classifier, as .safetensors and as a wrapped .pth."""
    root = tmp_path_factory.mktemp("vit")
    style, obj = timm_state(51, seed=1), timm_state(20, seed=2)
    save_file(style, root / "style.safetensors")
    torch.save({"state_dict": {f"module.{k}": v for k, v in obj.items()}, "epoch": 3},
               root / "object.pth")
    return root, style, obj


def test_mapped_model_computes_timm_vit(classifiers):
    root, style, _ = classifiers
    x = torch.randn(3, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(5))
    model = load_timm_vit(root / "style.safetensors", heads=HEADS)
    with torch.no_grad():
        got = model(x).logits
    want = timm_forward(style, x)
    assert got.shape == (3, 51)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    quiet = {k: v * 1e-3 if k.startswith(("cls", "pos", "patch")) else v for k, v in style.items()}
    save_file(quiet, root / "quiet.safetensors")  # variance near LayerNorm's eps: eps matters
    with torch.no_grad():
        got = load_timm_vit(root / "quiet.safetensors", heads=HEADS)(x).logits
    torch.testing.assert_close(got, timm_forward(quiet, x), atol=2e-5, rtol=1e-4)
    swapped = dict(style)  # the reference is sensitive to a wrong qkv split
    for i in range(DEPTH):
        q, k, v = style[f"blocks.{i}.attn.qkv.weight"].chunk(3)
        swapped[f"blocks.{i}.attn.qkv.weight"] = torch.cat([k, q, v])
    assert not torch.allclose(timm_forward(swapped, x), want, atol=1e-3)


def test_both_formats_load_and_the_judge_preprocesses_like_timm(classifiers, tmp_path):
    root, style, obj = classifiers
    torch.save({"model": style}, tmp_path / "style.pt")
    save_file({f"module.{k}": v for k, v in obj.items()}, tmp_path / "object.safetensors")
    images = np.random.default_rng(0).integers(0, 256, (5, SIZE, SIZE, 3), dtype=np.uint8)
    x = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.5
    want = timm_forward(style, x).argmax(1).numpy(), timm_forward(obj, x).argmax(1).numpy()
    for s, o in (("style.safetensors", "object.pth"), ("style.pt", "object.safetensors")):
        folder = root if s == "style.safetensors" else tmp_path
        judge = ViTJudge(ViTJudgeConfig(style=str(folder / s), object=str(root / o) if o ==
                                        "object.pth" else str(tmp_path / o), heads=HEADS,
                                        batch_size=2))
        got = judge.predict(images)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
    assert len(judge.style_labels) == 51 and "none" in judge.style_labels
    assert "none" in judge.style_labels and "Seed_Images" not in judge.style_labels
    small = judge.predict(images[:, ::2, ::2])  # other sizes are resized (bicubic) first
    assert small[0].shape == (5,)


def test_bad_classifiers_say_what_is_wrong(classifiers, tmp_path):
    root, style, obj = classifiers
    with pytest.raises(FileNotFoundError, match="nowhere/style.pth"):
        load_timm_vit(tmp_path / "nowhere" / "style.pth")
    save_file(timm_state(30), tmp_path / "s30.safetensors")
    bad = ViTJudgeConfig(style=str(tmp_path / "s30.safetensors"), object=str(root / "object.pth"),
                         heads=HEADS)
    with pytest.raises(ValueError, match="30 classes.*styles_60 has 61, styles_unlearning 51"):
        bad.style_set()
    with pytest.raises(ValueError, match="30 classes.*styles_60 has 61, styles_unlearning 51"):
        ViTJudge(bad)
    with pytest.raises(ValueError, match="object classifier .* has 51 classes; UnlearnCanvas has 20"):
        ViTJudgeConfig(style=str(root / "style.safetensors"),
                       object=str(root / "style.safetensors")).style_set()
    broken = {k: v for k, v in style.items() if k != "blocks.1.mlp.fc2.bias"}
    broken["fc_norm.weight"] = torch.ones(HIDDEN)
    save_file(broken, tmp_path / "broken.safetensors")
    with pytest.raises(ValueError, match=r"missing \['blocks.1.mlp.fc2.bias'\], unexpected "
                                         r"\['fc_norm.weight'\]"):
        load_timm_vit(tmp_path / "broken.safetensors", heads=HEADS)
    with pytest.raises(ValueError, match="does not split into 3 heads"):
        load_timm_vit(root / "style.safetensors", heads=3)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole_model.pth")
    with pytest.raises(ValueError, match="save model.state_dict"):
        load_timm_vit(tmp_path / "whole_model.pth")


def small_world(classifiers) -> tuple[ViTJudge, object]:
    """The random ViT judge, and a 2 x 2 UnlearnCanvas grid it names (its full grid is 51 x 20)."""
    root, _, _ = classifiers
    judge = ViTJudge(ViTJudgeConfig(style=str(root / "style.safetensors"),
                                    object=str(root / "object.pth"), heads=HEADS))
    return judge, replace(unlearncanvas_grid(style_set="styles_unlearning"),
                          objects=("Cats", "Dogs"), styles=("Monet", "Cubism"))


def test_the_judge_judges_a_stable_diffusion_grid_and_its_metrics(classifiers, tiny_sd_dir):
    from saeuron.diffusion import load_pipeline
    from saeuron.sae import SAEConfig, SparseAutoencoder
    from saeuron.metrics import unlearning_metrics
    from saeuron.unlearning import unlearned_grid

    judge, grid = small_world(classifiers)
    pipe = load_pipeline(tiny_sd_dir)
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, expansion_factor=2, k=4))
    result = unlearned_grid(pipe, judge, sae, "up_blocks.1.attentions.0", None, (1, 2),
                            num_steps=2, guidance=2.0, grid=grid)
    assert result.styles == ("Monet", "Cubism", "none") and result.objects == ("Cats", "Dogs")
    assert result.images.shape[:3] == (2, 3, 2)
    style, obj = judge.predict(result.images.reshape((-1,) + result.images.shape[3:]))
    names = [judge.style_labels[i] for i in style]
    want = [result.styles.index(n) if n in result.styles else -1 for n in names]
    np.testing.assert_array_equal(result.style_pred.ravel(), want)
    want = [result.objects.index(judge.object_labels[i]) if judge.object_labels[i] in
            result.objects else -1 for i in obj]
    np.testing.assert_array_equal(result.object_pred.ravel(), want)
    metrics = unlearning_metrics(result.judged(), "style", ["Monet"])
    assert set(metrics) == {"UA", "IRA", "CRA", "kept", "CRA_grid"}
    assert metrics["kept"] == result.object_ok[:, 0].mean(), "objects of Monet's own row"
    assert result.features.shape[:3] == (2, 3, 2), "the judge's features of every picture"
    assert metrics["CRA_grid"] == result.object_accuracy
    assert metrics["CRA"] == result.object_ok[:, -1].mean(), "objects of the unstyled row"
    with pytest.raises(ValueError, match="cannot name the unlearncanvas grid's style.*Techno"):
        unlearned_grid(pipe, judge, sae, "up_blocks.1.attentions.0", None, (1,), num_steps=2,
                       guidance=2.0, grid=replace(grid, styles=("Techno",)))


def test_the_sweep_judges_a_stable_diffusion_grid_with_its_judge(classifiers, tiny_sd_dir):
    from saeuron.edited import sample_edited
    from saeuron.intervention import Edit
    from saeuron.judging import predict_in
    from saeuron.metrics import Judged, unlearning_metrics
    from saeuron.diffusion import load_pipeline
    from saeuron.sae import SAEConfig, SparseAutoencoder
    from saeuron.sampling import SamplingConfig
    from saeuron.sweep import SweepConfig, sweep_concept, validation_cells

    judge, grid = small_world(classifiers)
    pipe, hook = load_pipeline(tiny_sd_dir), "up_blocks.1.attentions.0"
    torch.manual_seed(0)
    sae = SparseAutoencoder(SAEConfig(d_in=32, expansion_factor=2, k=4))
    cfg = SweepConfig(top_n=[2], multipliers=[-5.0], own=3, others=2, finalists=0,
                      fallback_gate=None)
    fast = SamplingConfig(num_steps=2, guidance=2.0)

    def edit(n: int, gamma: float, gate: str) -> Edit:
        selected = np.zeros((1, 1, 64), bool)
        selected[..., :n] = True
        return Edit.for_concepts([999], selected, np.ones((1, 1, 64)), [gamma], np.zeros((1, 64)))

    val = validation_cells(grid, "object", ["Cats"], cfg)
    assert sum("Cats" in p for p in val.prompts) == 3 and len(val.prompts) == 5
    n, gamma, gate, rows = sweep_concept(pipe, judge, grid, sae, hook, "object", "Cats", edit, cfg,
                                         fast)
    assert (n, gamma, rows[0]["concept"], rows[0]["images"]) == (2, -5.0, "Cats", 5)
    images = sample_edited(pipe, hook, sae, edit(2, -5.0, "mean"), val.prompts, val.seeds,
                           **fast.options())
    style, obj = predict_in(judge, images, grid)
    report = unlearning_metrics(Judged(val.styles, val.objects, style, obj,
                                       grid.styles + ("none",), grid.objects), "object", ["Cats"])
    assert {m: rows[0][m] for m in report if rows[0][m] is not None} == {
        m: round(v, 4) for m, v in report.items() if v == v}
    with pytest.raises(ValueError, match=r"unknown object\(s\) \['Birds'\]"):
        validation_cells(grid, "object", ["Birds"], cfg)


def unlearncanvas_world(classifiers, tiny_sd_dir, folder, **options) -> str:
    """A world file of a 2 x 2 part of UnlearnCanvas on the tiny SD, judged by the random ViTs."""
    import yaml

    root, _, _ = classifiers
    path = folder / "unlearncanvas.yaml"
    path.write_text(yaml.safe_dump({
        "model": str(tiny_sd_dir), "benchmark": "unlearncanvas",
        "objects": ["Cats", "Dogs"], "styles": ["Monet", "Cubism"],
        "hooks": {"style": "up_blocks.1.attentions.0", "object": "up_blocks.1.attentions.0"},
        "judge": {"kind": "unlearncanvas", "style": str(root / "style.safetensors"),
                  "object": str(root / "object.pth"), "heads": HEADS}, **options}))
    return str(path)


def test_a_part_of_unlearncanvas_is_a_world_judged_by_its_classifiers(classifiers, tiny_sd_dir,
                                                                     tmp_path):
    from saeuron.worlds import world

    w = world(unlearncanvas_world(classifiers, tiny_sd_dir, tmp_path))
    grid = w.grid()
    assert (grid.objects, grid.styles) == (("Cats", "Dogs"), ("Monet", "Cubism"))
    assert grid.prompt("Cats", "Monet") == "An Cats image in Monet style.", "the benchmark's"
    judge = w.judge("cpu")
    assert len(judge.style_labels) == 51, "the style head names the 50 unlearning styles + none"
    with pytest.raises(ValueError, match=r"unknown style\(s\) \['Baroque'\]"):
        world(unlearncanvas_world(classifiers, tiny_sd_dir, tmp_path, styles=["Baroque"])).grid()
    with pytest.raises(ValueError, match="drop prompts"):
        world(unlearncanvas_world(classifiers, tiny_sd_dir, tmp_path,
                                  prompts=[{"prompt": "a cat.", "object": "Cats"}]))


def test_evaluate_flow_on_stable_diffusion_with_the_vit_judge(classifiers, tiny_sd_dir, tmp_path,
                                                              prefect_api):
    from flows.evaluate import evaluate
    from flows.score import score
    from saeuron.run import RunConfig
    from saeuron.sae import SAEConfig, SparseAutoencoder
    from saeuron.sampling import SamplingConfig
    from saeuron.scoring import DomainHooks, DomainSweeps, ScoreConfig
    from saeuron.sweep import SweepConfig
    from saeuron.unlearning import EvaluateConfig
    from stores import HOOK, as_harvested, synthetic_store
    from storage.features import read_features

    world = unlearncanvas_world(classifiers, tiny_sd_dir, tmp_path)
    store = str(tmp_path / "acts.zarr")
    synthetic_store(store, n=24, f=32, objects=("Cats", "Dogs"), styles=("none", "Monet", "Cubism"))
    layout = as_harvested(tmp_path, store, model=str(tiny_sd_dir))
    torch.manual_seed(0)
    SparseAutoencoder(SAEConfig(d_in=32, expansion_factor=2, k=4)).save(tmp_path / "sae" / HOOK)
    layout.finish("train", "sae-0", {HOOK: str(tmp_path / "sae" / HOOK)}, {}, 0.0, upstream={})
    run = RunConfig(root=str(tmp_path))
    sweep = SweepConfig(top_n=[1, 2], multipliers=[-3.0], own=2, others=2, finalists=0,
                        fallback_gate=None)
    fast = SamplingConfig(num_steps=2, guidance=2.0)
    scored = score(ScoreConfig(hooks=DomainHooks(style=HOOK, object=HOOK), top_n=2,
                               exclusive=False, gate="mean",
                               sweep=DomainSweeps(object=sweep, workers=1)),
                   run, grid=world, sampling=fast)
    attrs, _, _ = read_features(scored["outputs"]["object"])
    assert {r["concept"] for r in attrs["sweep"]} == {"Cats", "Dogs"}, \
        "the score stage sweeps Stable Diffusion's objects, judged by the ViT classifiers"
    assert all(r["images"] == 4 for r in attrs["sweep"])
    config = EvaluateConfig(model=world, grid=world, style_sets=[])
    manifest = evaluate(config, run, sampling=fast)
    rows = {name: json.loads((tmp_path / "eval" / name / "metrics.json").read_text())["row"]
            for name in ("baseline", "Monet", "Cubism", "Cats", "Dogs")}
    assert all(0 <= rows[n][m] <= 1 for n in ("Monet", "Cats") for m in ("UA", "IRA", "CRA"))
    assert [s["targets"] for s in manifest["metrics"]["summary"]] == ["style", "object"]
    assert "| Monet |" in (tmp_path / "eval" / "report.md").read_text()


def test_the_sd_config_is_the_papers_protocol_on_the_unlearncanvas_world():
    from pathlib import Path

    from saeuron.run import PipelineConfig
    from saeuron.unlearning import EvaluateConfig

    project = Path(__file__).parents[1]
    config = PipelineConfig.from_yaml(project / "configs" / "sd-unlearncanvas.yaml")
    world = "configs/worlds/unlearncanvas.yaml"
    assert config.world == config.harvest.grid == config.evaluate.grid == world
    data = config.model_dump()
    data["evaluate"] |= {"grid": "minicanvas"}
    with pytest.raises(ValueError, match="evaluate.grid 'minicanvas' differs from harvest.grid"):
        PipelineConfig.model_validate(data)
    with pytest.raises(FileNotFoundError, match="/models/unlearncanvas-classifiers/object.pth"):
        config.evaluate.concept_grid()
    assert config.score.sweep.style is None and config.score.sweep.object.top_n == [1]
    assert config.stage_options("score") == {"sampling": config.sampling, "grid": world}, \
        "the sweep samples and judges as evaluate"
    assert (config.sampling.device, config.sampling.num_steps, config.sampling.guidance) == (
        "cuda", 100, 9.0), "the paper's evaluation: DDIM 100 steps, guidance 9"
    assert config.harvest.sampling(config.sampling).num_steps == 50, "harvested at 50 steps"
    assert config.evaluate.seeds() == [188, 288, 588, 688, 888], "the benchmark's seeds"
    clash = config.model_dump()
    clash["harvest"]["n_seeds"] = 300
    with pytest.raises(ValueError, match=r"seeds \[188, 288\] also sample the harvest"):
        PipelineConfig.model_validate(clash)
    with pytest.raises(ValueError, match="distinct seeds"):
        EvaluateConfig(seed_list=[5, 5])
    assert config.score.hooks.style == "up_blocks.1.attentions.2"
    assert config.score.hooks.object == "up_blocks.1.attentions.1"
