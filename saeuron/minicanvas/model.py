"""The MiniCanvas text-to-image model, built from the same classes as Stable Diffusion."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from saeuron.minicanvas.codec import SpaceToDepthCodec
from saeuron.minicanvas.prompts import MAX_LENGTH, build_tokenizer
from saeuron.minicanvas.render import SIZE
from saeuron.diffusion import Pipeline

TEXT_WIDTH = 64
BLOCK_CHANNELS = (64, 64, 128)
"""UNet widths at 16x16, 8x8 and 4x4 latents; up_blocks.1 (SD's favourite hook) runs at 8x8."""


def build_pipeline(seed: int = 0, text_time_embedding: bool = True) -> Pipeline:
    """A freshly initialised MiniCanvas pipeline (deterministic for a seed); without
    `text_time_embedding` the prompt reaches the UNet through cross-attention only, as in
    Stable Diffusion 1.x/2.x."""
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    codec = SpaceToDepthCodec(factor=2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id))
    unet = UNet2DConditionModel(
        sample_size=SIZE // codec.factor, in_channels=codec.latent_channels,
        out_channels=codec.latent_channels, block_out_channels=BLOCK_CHANNELS,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        layers_per_block=1, cross_attention_dim=TEXT_WIDTH, attention_head_dim=8,
        norm_num_groups=16,
        # By default the attention-pooled prompt also joins the time embedding: global
        # conditioning that makes the object word take hold sooner than cross-attention alone
        # (which reached the same judged accuracy by 5,000 steps; BENCHMARKS.md).
        addition_embed_type="text" if text_time_embedding else None,
        addition_embed_type_num_heads=4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              prediction_type="epsilon", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return Pipeline(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                    scheduler=scheduler, vae=codec)
