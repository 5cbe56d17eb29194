"""Text-to-image pipelines in diffusers' folder layout: load, check, save, encode prompts.

One loader serves MiniCanvas and Stable Diffusion 1.x/2.x checkpoint directories alike: it reads
`model_index.json`, imports each component's class from the library named there, and loads it
from its subfolder. A pipeline is a plain dataclass of components, not a diffusers
`DiffusionPipeline`, so the sampling loop (saeuron.sampling) can hook any block it likes.
"""

from __future__ import annotations

import importlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, ModelMixin, UNet2DConditionModel


REQUIRED = ("unet", "text_encoder", "tokenizer", "scheduler")
OPTIONAL = ("vae",)


_LOAD_LOCK = threading.Lock()
"""Model loading is not thread-safe in the libraries (global init patches): one at a time."""


class PipelineLoadError(ValueError):
    """A pipeline folder is missing, incomplete, corrupt, or not a text-to-image UNet model."""


@dataclass
class Pipeline:
    unet: UNet2DConditionModel
    text_encoder: Any
    tokenizer: Any
    scheduler: Any
    vae: Any = None
    """An AutoencoderKL, or a codec of the pipeline's own (MiniCanvas's SpaceToDepthCodec: any
    object with `decode(latents)` and `latent_channels`, named in model_index.json), or None
    (the UNet works on pixels)."""
    path: str | None = None

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    def to(self, device: str | torch.device) -> "Pipeline":
        self.unet.to(device)
        self.text_encoder.to(device)
        if isinstance(self.vae, torch.nn.Module):
            self.vae.to(device)
        return self

    def latents_to_images(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode latents to images in [0, 1], shape (B, 3, H, W)."""
        if self.vae is None:
            images = latents
        elif isinstance(self.vae, AutoencoderKL):
            images = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        else:
            images = self.vae.decode(latents)
        return (images.float() / 2 + 0.5).clamp(0, 1)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the diffusers folder layout: model_index.json plus one subfolder per component."""
        root = Path(path)
        root.mkdir(parents=True, exist_ok=True)
        index: dict[str, Any] = {"_class_name": "SAeUronTextToImage"}
        for name in REQUIRED + OPTIONAL:
            component = getattr(self, name)
            if component is None:
                continue
            kwargs = {"safe_serialization": True} if isinstance(component, torch.nn.Module) else {}
            component.save_pretrained(root / name, **kwargs)
            cls = type(component)
            library = cls.__module__.split(".")[0]
            library = cls.__module__ if library == "saeuron" else library
            index[name] = [library, cls.__name__]
        (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        return root

    def check_prompts(self, prompts: list[str]) -> None:
        """Raise before any work if a prompt has a word the tokenizer does not know."""
        check_vocabulary(self.tokenizer, prompts)

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Token embeddings (B, L, D) of the prompts; unknown words are an error, not <unk>."""
        self.check_prompts(prompts)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True,
                                max_length=self.tokenizer.model_max_length, return_tensors="pt")
        with torch.no_grad():
            return self.text_encoder(tokens.input_ids.to(self.device))[0]


def check_vocabulary(tokenizer: Any, prompts: list[str]) -> None:
    """Raise if a word-level tokenizer would map some word of a prompt to its unknown token."""
    unk_id = tokenizer.unk_token_id
    if unk_id is None or getattr(tokenizer, "is_fast", False) is False:
        return
    for prompt in prompts:
        enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=False)
        unknown = [prompt[a:b] for i, (a, b) in zip(enc.input_ids, enc.offset_mapping) if i == unk_id]
        if unknown:
            known = [w for w in tokenizer.get_vocab() if not w.startswith("<")]
            raise ValueError(
                f"unknown word(s) {unknown} in prompt {prompt!r}; this model's vocabulary is: "
                f"{', '.join(sorted(known))}")


def _component_class(library: str, class_name: str) -> type:
    try:
        return getattr(importlib.import_module(library), class_name)
    except (ImportError, AttributeError) as err:
        raise PipelineLoadError(f"model_index.json names {library}.{class_name}, which cannot be "
                                f"imported: {err}") from err


def load_pipeline(path: str | os.PathLike, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32) -> Pipeline:
    """Load a pipeline folder (MiniCanvas or a Stable Diffusion checkpoint directory)."""
    root = Path(path)
    index_file = root / "model_index.json"
    if not root.is_dir():
        raise PipelineLoadError(f"no pipeline folder at {str(root)!r}")
    if not index_file.is_file():
        raise PipelineLoadError(f"{str(root)!r} has no model_index.json: it is not a diffusers "
                                "pipeline folder")
    try:
        index = json.loads(index_file.read_text())
    except json.JSONDecodeError as err:
        raise PipelineLoadError(f"{index_file} is not valid JSON: {err}") from err
    missing = [name for name in REQUIRED if not index.get(name) or index[name][0] is None]
    if missing:
        raise PipelineLoadError(f"{str(root)!r} lacks the component(s) {missing}; a text-to-image "
                                f"pipeline needs {list(REQUIRED)}")
    parts: dict[str, Any] = {}
    for name in REQUIRED + OPTIONAL:
        entry = index.get(name)
        if not entry or entry[0] is None:
            continue
        if not (root / name).is_dir():
            raise PipelineLoadError(f"model_index.json lists {name!r} but {root / name} is missing")
        cls = _component_class(*entry)
        kwargs: dict[str, Any] = {}
        if isinstance(cls, type) and issubclass(cls, torch.nn.Module):
            kwargs = {"torch_dtype": dtype}
        if isinstance(cls, type) and issubclass(cls, ModelMixin):
            # diffusers' low-memory path patches torch.nn.Module globally (accelerate's
            # init_empty_weights), which breaks models built at the same time in other threads.
            kwargs["low_cpu_mem_usage"] = False
        try:
            with _LOAD_LOCK:
                parts[name] = cls.from_pretrained(root, subfolder=name, **kwargs)
        except Exception as err:  # corrupt or truncated files surface as many exception types
            raise PipelineLoadError(f"cannot load {name!r} ({entry[1]}) from {root / name}: "
                                    f"{type(err).__name__}: {err}") from err
    pipe = Pipeline(**parts, path=str(root))
    check_architecture(pipe)
    return pipe.to(device)


def check_architecture(pipe: Pipeline) -> None:
    """The components must fit together as a text-conditioned UNet model."""
    unet, enc = pipe.unet, pipe.text_encoder
    if not isinstance(unet, UNet2DConditionModel):
        raise PipelineLoadError(f"the unet is a {type(unet).__name__}, not a "
                                "UNet2DConditionModel with cross-attention")
    width = getattr(enc.config, "hidden_size", None)
    if unet.config.cross_attention_dim != width:
        raise PipelineLoadError(
            f"unet cross_attention_dim {unet.config.cross_attention_dim} does not match the text "
            f"encoder's hidden size {width}: the folders come from different models")
    vae = pipe.vae
    channels = (3 if vae is None else vae.config.latent_channels
                if isinstance(vae, AutoencoderKL) else vae.latent_channels)
    if unet.config.in_channels != channels:
        raise PipelineLoadError(f"unet takes {unet.config.in_channels} input channels but the "
                                f"vae gives {channels}")
    if len(pipe.tokenizer) > enc.config.vocab_size:
        raise PipelineLoadError(f"tokenizer has {len(pipe.tokenizer)} tokens but the text encoder "
                                f"only {enc.config.vocab_size}")
