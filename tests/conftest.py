"""Shared fixtures: pipelines on disk (fresh MiniCanvas, tiny SD), shipped weights, Prefect."""

from __future__ import annotations

import os
import tempfile

import pytest

# Prefect must never touch the user's ~/.prefect, nor phone home, from the tests.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="saeuron-prefect-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from saeuron.minicanvas import JUDGE_DIR, MODEL_DIR
from saeuron.minicanvas.classifier import Judge
from saeuron.minicanvas.model import build_pipeline
from saeuron.diffusion import Pipeline, load_pipeline


@pytest.fixture(scope="session")
def fresh_pipeline_dir(tmp_path_factory: pytest.TempPathFactory):
    """An untrained MiniCanvas pipeline saved in diffusers' layout."""
    path = tmp_path_factory.mktemp("pipeline") / "minicanvas"
    build_pipeline(seed=0).save(path)
    return path


@pytest.fixture(scope="module")
def pipe(fresh_pipeline_dir) -> Pipeline:
    """The untrained MiniCanvas pipeline, loaded (hooks added by a test are removed by it)."""
    return load_pipeline(fresh_pipeline_dir)


@pytest.fixture(scope="session")
def shipped_pipeline() -> Pipeline:
    return load_pipeline(MODEL_DIR)


@pytest.fixture(scope="session")
def judge() -> Judge:
    return Judge.load(JUDGE_DIR)


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory: pytest.TempPathFactory):
    """A randomly initialised Stable Diffusion pipeline folder, written by diffusers itself."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = tmp_path_factory.mktemp("tiny-sd")
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["."]
    vocab = {t: i for i, t in enumerate(["<|startoftext|>", "<|endoftext|>"] + letters
                                         + [c + "</w>" for c in letters])}
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
        pad_token_id=1))
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        block_out_channels=(8, 16), norm_num_groups=8,
                        down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              skip_prk_steps=True, steps_offset=1)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 unet=unet, scheduler=scheduler, safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(root / "sd")
    return root / "sd"


@pytest.fixture(scope="session")
def prefect_api():
    """One real Prefect test server for the session; subprocesses and Dask workers reach it
    through PREFECT_API_URL instead of each starting a server of its own."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        os.environ["PREFECT_API_URL"] = url
        yield url
        os.environ.pop("PREFECT_API_URL", None)
