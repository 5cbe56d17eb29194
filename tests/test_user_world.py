"""A user's own world as a file: the whole pipeline, sweep included, on a tiny Stable Diffusion
with objects and styles of the user's naming, judged by transformers classifiers or by CLIP
zero-shot, sampled by the model's scheduler or by Euler."""

import json

import pytest
import torch
import yaml

OBJECTS, STYLES = ["apple", "pear", "plum"], ["watercolor", "pixel"]
HOOKS = {"style": "up_blocks.1.attentions.1", "object": "up_blocks.1.attentions.0"}


def vit_classifier(folder, labels: list[str], seed: int) -> str:
    """A tiny random transformers ViT classifier with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    model = ViTForImageClassification(ViTConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        image_size=32, patch_size=8, num_labels=len(labels),
        id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)}))
    model.save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def clip_model(folder) -> str:
    """A tiny random CLIP with a letters-only tokenizer and its processor."""
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor,
                              CLIPTokenizer)

    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["."]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters
                                         + [c + "</w>" for c in letters])}
    (folder / "tok").mkdir(parents=True)
    (folder / "tok" / "vocab.json").write_text(json.dumps(vocab))
    (folder / "tok" / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "tok" / "vocab.json"), str(folder / "tok" / "merges.txt"))
    torch.manual_seed(3)
    model = CLIPModel(CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=64,
                         bos_token_id=0, eos_token_id=1, pad_token_id=1),
        vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8),
        projection_dim=8))
    model.save_pretrained(folder)
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}), tokenizer=tokenizer)
    processor.save_pretrained(folder)
    return str(folder)


def world_file(folder, model, judge: dict, **extra) -> str:
    path = folder / "fruit.yaml"
    path.write_text(yaml.safe_dump({"model": str(model), "objects": OBJECTS, "styles": STYLES,
                                    "hooks": HOOKS, "judge": judge, **extra}))
    return str(path)


def small_run(world: str, root, scheduler: str = "model"):
    from saeuron.run import PipelineConfig

    sweep = {"top_n": [1, 2], "multipliers": [-3.0], "own": 2, "others": 2, "finalists": 0,
             "fallback_gate": None}
    return PipelineConfig.model_validate({
        "world": world, "run": {"root": str(root), "shards": 1},
        "sampling": {"num_steps": 2, "guidance": 2.0, "scheduler": scheduler},
        "harvest": {"templates": 1, "num_steps": 3, "n_seeds": 1, "samples_per_chunk": 7},
        "train": {"expansion_factor": 2, "k": 4, "aux_k": 8, "batch_size": 64, "epochs": 1,
                  "holdout": 0.2, "buffer_size": 256},
        "score": {"top_n": 2, "exclusive": False,
                  "sweep": {"style": None, "object": sweep, "workers": 1}},
        "evaluate": {"n_seeds": 1}})


def check_finished(result: dict, root) -> None:
    from storage.features import read_features

    assert {s["stage"]: s["state"] for s in result["stages"]} == dict.fromkeys(
        ("harvest", "train", "score", "evaluate"), "Completed")
    manifest = json.loads((root / "manifests" / "score.json").read_text())
    attrs, _, _ = read_features(str(root / manifest["outputs"]["object"]))
    assert {r["concept"] for r in attrs["sweep"]} == set(OBJECTS), "the sweep ran on the world"
    for target in STYLES + OBJECTS:
        row = json.loads((root / "eval" / target / "metrics.json").read_text())["row"]
        assert all(0 <= row[m] <= 1 for m in ("UA", "IRA", "CRA")), (target, row)
    assert "| apple |" in (root / "eval" / "report.md").read_text()


def test_a_world_file_with_transformers_classifiers_runs_the_whole_pipeline(
        tiny_sd_dir, tmp_path, prefect_api):
    from flows.pipeline import pipeline

    judge = {"kind": "transformers",
             "style": vit_classifier(tmp_path / "style", STYLES + ["plain"], 1),
             "object": vit_classifier(tmp_path / "object", OBJECTS, 2), "unstyled_label": "plain"}
    world = world_file(tmp_path, tiny_sd_dir, judge)
    config = small_run(world, tmp_path / "run")
    assert config.harvest.grid == world and config.score.hooks.style == HOOKS["style"]
    check_finished(pipeline(config), tmp_path / "run")


def test_a_clip_judged_world_sampled_with_euler_runs_the_whole_pipeline(
        tiny_sd_dir, tmp_path, prefect_api):
    from flows.pipeline import pipeline
    from saeuron.diffusion import load_pipeline
    from saeuron.sampling import make_scheduler, schedule_timesteps

    world = world_file(tmp_path, tiny_sd_dir, {"kind": "clip", "path": clip_model(tmp_path / "clip")})
    pipe = load_pipeline(tiny_sd_dir)
    assert type(make_scheduler(pipe, 3, "euler")).__name__ == "EulerDiscreteScheduler"
    assert schedule_timesteps(pipe, 3, "euler") != schedule_timesteps(pipe, 3, "dpm-solver")
    check_finished(pipeline(small_run(world, tmp_path / "run", scheduler="euler")), tmp_path / "run")
    from saeuron.worlds import world as load_world

    judge = load_world(world).judge("cpu")
    assert judge.style_labels == ("watercolor", "pixel", "none")


def test_a_bad_world_file_says_what_is_wrong(tmp_path, tiny_sd_dir):
    from saeuron.run import PipelineConfig

    world = world_file(tmp_path, tiny_sd_dir, {"kind": "clip", "path": str(tmp_path)},
                       styled_templates=["a {object}."])
    with pytest.raises(ValueError, match=r"styled_templates: 'a \{object\}.' must hold"):
        PipelineConfig(world=world)
    with pytest.raises(ValueError, match="world file 'nowhere.yaml' does not exist"):
        PipelineConfig(world="nowhere.yaml")
    world = world_file(tmp_path, tiny_sd_dir, {"kind": "clip", "path": str(tmp_path)})
    from saeuron.worlds import world as load_world

    with pytest.raises(ValueError, match="is not a transformers model folder"):
        load_world(world).judge("cpu")


def test_a_world_of_labelled_prompts_samples_them_as_written(tmp_path, tiny_sd_dir):
    from saeuron.harvest import HarvestConfig, prepare
    from saeuron.run import PipelineConfig

    prompts = [{"prompt": f"a {o} painted in {s}." if s != "none" else f"just a {o}.",
                "object": o, "style": s} for s in STYLES + ["none"] for o in OBJECTS]
    prompts.append({"prompt": "another apple in watercolor.", "object": "apple",
                    "style": "watercolor"})
    world = world_file(tmp_path, tiny_sd_dir, {"kind": "clip", "path": str(tmp_path)},
                       prompts=prompts)
    config = PipelineConfig(world=world)
    table = prepare(config.harvest.model_copy(update={"n_seeds": 1})).table
    assert len(table) == len(prompts), "every labelled prompt, once per seed"
    row = table[table.prompt == "another apple in watercolor."].iloc[0]
    assert (row.object, row["style"]) == ("apple", "watercolor")
    assert config.evaluate.concept_grid().prompt("apple", "watercolor") == \
        "a apple painted in watercolor.", "a cell's first prompt is the one evaluated"
    assert HarvestConfig(model=world, grid=world).concept_grid().prompt("pear", "none") == \
        "just a pear."
    with pytest.raises(ValueError, match=r"no prompt for the cell\(s\) \[\('plum', 'none'\)\]"):
        PipelineConfig(world=world_file(tmp_path, tiny_sd_dir, {"kind": "clip",
                                                                "path": str(tmp_path)},
                                        prompts=prompts[:-2] + prompts[-1:]))
    with pytest.raises(ValueError, match=r"'a kiwi\.' is labelled \(kiwi, none\)"):
        PipelineConfig(world=world_file(tmp_path, tiny_sd_dir, {"kind": "clip",
                                                                "path": str(tmp_path)},
                                        prompts=prompts + [{"prompt": "a kiwi.",
                                                            "object": "kiwi"}]))
