import json
import shutil

import numpy as np
import pytest
import torch

from saeuron.minicanvas.model import build_pipeline
from saeuron.diffusion import PipelineLoadError, load_pipeline
from saeuron.sampling import sample


def test_layout_is_diffusers(fresh_pipeline_dir):
    index = json.loads((fresh_pipeline_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (fresh_pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (fresh_pipeline_dir / "text_encoder" / "model.safetensors").is_file()


def test_save_load_round_trip_gives_the_same_pictures(fresh_pipeline_dir):
    built = build_pipeline(seed=0)
    loaded = load_pipeline(fresh_pipeline_dir)
    for a, b in zip(built.unet.state_dict().values(), loaded.unet.state_dict().values()):
        assert torch.equal(a, b)
    prompts, seeds = ["a star in neon style", "a moon"], [1, 2]
    assert np.array_equal(sample(built, prompts, seeds, num_steps=3),
                          sample(loaded, prompts, seeds, num_steps=3))


def test_a_model_without_the_text_time_embedding_saves_loads_and_samples(tmp_path):
    """Conditioned through cross-attention only (as Stable Diffusion 1.x/2.x): no prompt
    reaches the time embedding, and the saved folder loads as that model."""
    built = build_pipeline(seed=0, text_time_embedding=False)
    assert not hasattr(built.unet, "add_embedding") and built.unet.config.addition_embed_type is None
    built.save(tmp_path / "m")
    loaded = load_pipeline(tmp_path / "m")
    assert not hasattr(loaded.unet, "add_embedding")
    prompts, seeds = ["a star in neon style", "a moon"], [1, 2]
    assert np.array_equal(sample(built, prompts, seeds, num_steps=3, precision="float32"),
                          sample(loaded, prompts, seeds, num_steps=3, precision="float32"))


def test_picture_depends_on_seed_not_batch(fresh_pipeline_dir):
    pipe = load_pipeline(fresh_pipeline_dir)
    prompts, seeds = ["a star in neon style", "a moon", "a ring in pop style"], [7, 8, 9]
    together = sample(pipe, prompts, seeds, num_steps=3)
    alone = sample(pipe, prompts[1:2], seeds[1:2], num_steps=3)
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1
    assert not np.array_equal(together[0], together[1])


def test_unknown_concept_word_fails_before_sampling(fresh_pipeline_dir):
    pipe = load_pipeline(fresh_pipeline_dir)
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['dragon'\]"):
        sample(pipe, ["a dragon in sunset style"], [0])


def test_missing_folder_and_missing_index(tmp_path):
    with pytest.raises(PipelineLoadError, match="no pipeline folder"):
        load_pipeline(tmp_path / "nowhere")
    with pytest.raises(PipelineLoadError, match="no model_index.json"):
        load_pipeline(tmp_path)


def test_missing_component(fresh_pipeline_dir, tmp_path):
    copy = shutil.copytree(fresh_pipeline_dir, tmp_path / "p")
    shutil.rmtree(copy / "unet")
    with pytest.raises(PipelineLoadError, match="lists 'unet' but .* is missing"):
        load_pipeline(copy)


def test_corrupt_weights_name_the_component(fresh_pipeline_dir, tmp_path):
    copy = shutil.copytree(fresh_pipeline_dir, tmp_path / "p")
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(PipelineLoadError, match="cannot load 'unet'"):
        load_pipeline(copy)


def test_weights_of_another_architecture(fresh_pipeline_dir, tmp_path):
    copy = shutil.copytree(fresh_pipeline_dir, tmp_path / "p")
    cfg_file = copy / "unet" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["block_out_channels"] = [32, 64, 64]
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(PipelineLoadError, match="cannot load 'unet'"):
        load_pipeline(copy)


def test_components_from_different_models(fresh_pipeline_dir, tmp_path):
    copy = shutil.copytree(fresh_pipeline_dir, tmp_path / "p")
    cfg_file = copy / "text_encoder" / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["hidden_size"], cfg["intermediate_size"] = 32, 128
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(PipelineLoadError):
        load_pipeline(copy)
