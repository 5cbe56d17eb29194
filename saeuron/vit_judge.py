"""The UnlearnCanvas judge: two fine-tuned timm ViTs (style, object) run as transformers' ViT.

UnlearnCanvas ships its classifiers as state dicts of timm's `vit_large_patch16_224`. timm is
not a dependency (its torchvision pin fights the CPU torch build), so the timm keys are renamed
onto `transformers.ViTForImageClassification`, which computes the same function: pre-norm
blocks, a fused qkv split into query/key/value, exact GELU, LayerNorm eps 1e-6, the class token
through the final norm into the head. The label order is the benchmark's alphabetical names
(saeuron/data/unlearncanvas.json); the style head's size says which style list it was trained
on, and its 'Seed_Images' class is the grid's unstyled row ('none').
"""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file
from transformers import ViTConfig, ViTForImageClassification

from saeuron.config import Config
from saeuron.names import NO_STYLE

Positive = Annotated[float, Field(gt=0)]
SEED_IMAGES = "Seed_Images"
"""UnlearnCanvas's class of unstyled (photo-realistic) images."""


class ViTJudgeConfig(Config):
    """The UnlearnCanvas benchmark's judge: its fine-tuned timm ViT-Large style and object
    classifiers, with the benchmark's labels (saeuron.vit_judge)."""

    kind: Literal["unlearncanvas"] = "unlearncanvas"
    style: str = Field(..., description="Style classifier: a timm vit_large_patch16_224 state "
                       "dict (.pth, .pt or .safetensors) with 61 (styles_60) or 51 "
                       "(styles_unlearning) classes.")
    object: str = Field(..., description="Object classifier: the same format, 20 classes.")
    heads: int | None = Field(None, ge=1, le=256, description="Attention heads (default: hidden "
                              "size / 64, as in timm's ViT-Ti/S/B/L; ViT-L: 16).")
    image_size: int | None = Field(None, ge=16, le=2048, description="Side the images are "
                                   "resized to (default: the classifier's own, from its "
                                   "position embeddings; others interpolate them).")
    interpolation: Literal["bicubic", "bilinear"] = Field(
        "bicubic", description="Resize filter (antialiased); timm's default is bicubic.")
    mean: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="Per-channel mean "
                                             "subtracted from images in [0, 1].")
    std: tuple[Positive, Positive, Positive] = Field((0.5, 0.5, 0.5), description="Per-channel "
                                                     "divisor after the mean.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per classifier call.")

    def style_set(self) -> str:
        """The UnlearnCanvas style list of the style classifier, after checking both heads'
        sizes; reads the checkpoints' shapes only, so a bad pair fails before any sampling."""
        check_objects(self.object, head_size(self.object))
        return style_set_of(head_size(self.style))


def unlearncanvas_names() -> dict[str, list[str]]:
    return json.loads(resources.files("saeuron.data").joinpath("unlearncanvas.json").read_text())


def style_set_of(n_classes: int) -> str:
    """Which UnlearnCanvas style list a style head of `n_classes` outputs was trained on."""
    names = unlearncanvas_names()
    for key in ("styles_60", "styles_unlearning"):
        if len(names[key]) == n_classes:
            return key
    raise ValueError(f"a style classifier with {n_classes} classes matches no UnlearnCanvas style "
                     f"list: styles_60 has {len(names['styles_60'])}, styles_unlearning "
                     f"{len(names['styles_unlearning'])} (both with {SEED_IMAGES})")


def check_objects(path: str | Path, n_classes: int) -> None:
    n_objects = len(unlearncanvas_names()["objects"])
    if n_classes != n_objects:
        raise ValueError(f"object classifier {path} has {n_classes} classes; UnlearnCanvas has "
                         f"{n_objects} objects")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors: .safetensors, or a .pth/.pt state dict (possibly nested under
    'state_dict' or 'model', possibly with DataParallel's 'module.' prefixes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"classifier weights {str(path)!r} do not exist")
    if path.suffix == ".safetensors":
        state = load_file(path)
    else:
        try:  # mmap: reading a head's shape does not read the whole 1.2 GB
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:
            raise ValueError(f"cannot read {path} as a state dict ({type(err).__name__}: {err}); "
                             "save model.state_dict() rather than the model object") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def head_size(path: str | Path) -> int:
    """Classes of a timm classifier checkpoint, from its head's shape."""
    state = read_state_dict(path)
    if "head.weight" not in state:
        raise ValueError(f"{path} has no 'head.weight': not a timm ViT classifier "
                         f"(keys: {', '.join(list(state)[:6])}, ...)")
    return int(state["head.weight"].shape[0])


def timm_key_map(depth: int, new_names: bool) -> dict[str, tuple[str, ...]]:
    """timm ViT key -> transformers ViT key(s); the fused qkv maps to three. `new_names`:
    transformers >= 5 (layers.i.attention.q_proj, mlp.fc1) rather than encoder.layer.i.*."""
    keys = {"cls_token": ("vit.embeddings.cls_token",),
            "pos_embed": ("vit.embeddings.position_embeddings",)}
    for p in ("weight", "bias"):
        keys[f"patch_embed.proj.{p}"] = (f"vit.embeddings.patch_embeddings.projection.{p}",)
        keys[f"norm.{p}"] = (f"vit.layernorm.{p}",)
        keys[f"head.{p}"] = (f"classifier.{p}",)
    if new_names:
        names = {"attn.qkv": ("attention.q_proj", "attention.k_proj", "attention.v_proj"),
                 "attn.proj": ("attention.o_proj",), "mlp.fc1": ("mlp.fc1",),
                 "mlp.fc2": ("mlp.fc2",)}
    else:
        names = {"attn.qkv": tuple(f"attention.attention.{n}" for n in ("query", "key", "value")),
                 "attn.proj": ("attention.output.dense",), "mlp.fc1": ("intermediate.dense",),
                 "mlp.fc2": ("output.dense",)}
    names |= {"norm1": ("layernorm_before",), "norm2": ("layernorm_after",)}
    layer = "vit.layers.{}." if new_names else "vit.encoder.layer.{}."
    for i in range(depth):
        for timm, hf in names.items():
            for p in ("weight", "bias"):
                keys[f"blocks.{i}.{timm}.{p}"] = tuple(layer.format(i) + f"{h}.{p}" for h in hf)
    return keys


def load_timm_vit(path: str | Path, heads: int | None = None) -> ViTForImageClassification:
    """A transformers ViT classifier computing what the timm ViT state dict at `path` computes."""
    state = read_state_dict(path)
    needed = ("cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.mlp.fc1.weight",
              "head.weight")
    absent = [k for k in needed if k not in state]
    if absent:
        raise ValueError(f"{path} is not a timm ViT state dict: it lacks {', '.join(absent)} "
                         f"(it has {', '.join(list(state)[:6])}, ...)")
    hidden = state["cls_token"].shape[-1]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = math.isqrt(state["pos_embed"].shape[1] - 1)
    if side * side != state["pos_embed"].shape[1] - 1:
        raise ValueError(f"{path}: pos_embed of shape {tuple(state['pos_embed'].shape)} is not a "
                         "class token plus a square patch grid")
    depth = 1 + max(int(m[1]) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    heads = heads or hidden // 64
    if heads < 1 or hidden % heads:
        raise ValueError(f"{path}: hidden size {hidden} does not split into {heads} heads; "
                         "set the classifier's heads")
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=depth, num_attention_heads=heads,
                       intermediate_size=state["blocks.0.mlp.fc1.weight"].shape[0],
                       image_size=side * patch, patch_size=patch, layer_norm_eps=1e-6,
                       hidden_act="gelu", qkv_bias=True, num_labels=state["head.weight"].shape[0])
    with torch.device("meta"):  # no random init of 300M parameters that are overwritten next
        model = ViTForImageClassification(config)
    keys = timm_key_map(depth, new_names="vit.layers.0.layernorm_before.weight" in model.state_dict())
    missing = [k for k in keys if k not in state]
    unexpected = [k for k in state if k not in keys]
    if missing or unexpected:
        raise ValueError(f"{path} does not match a {depth}-block timm ViT: missing "
                         f"{missing[:5] or 'nothing'}{' ...' if len(missing) > 5 else ''}, "
                         f"unexpected {unexpected[:5] or 'nothing'}"
                         f"{' ...' if len(unexpected) > 5 else ''}")
    renamed = {hf: part for timm, targets in keys.items()
               for hf, part in zip(targets, state[timm].float().chunk(len(targets)))}
    try:
        model.load_state_dict(renamed, strict=True, assign=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: tensor shapes do not fit a ViT: {err}") from err
    return model.eval()


class ViTJudge:
    """The UnlearnCanvas style and object classifiers, with MiniCanvas's Judge interface."""

    def __init__(self, cfg: ViTJudgeConfig, device: str | torch.device = "cpu",
                 style_labels: tuple[str, ...] | None = None,
                 object_labels: tuple[str, ...] | None = None):
        """`style_labels` / `object_labels`: the heads' class names (a user world's); None:
        UnlearnCanvas's, the style list told by the head's size."""
        self.cfg, self.device = cfg, torch.device(device)
        self.style_model = load_timm_vit(cfg.style, cfg.heads).to(self.device)
        self.object_model = load_timm_vit(cfg.object, cfg.heads).to(self.device)
        names = unlearncanvas_names()
        if style_labels is None:
            style_set = style_set_of(self.style_model.config.num_labels)
            style_labels = tuple(NO_STYLE if s == SEED_IMAGES else s for s in names[style_set])
        if object_labels is None:
            check_objects(cfg.object, self.object_model.config.num_labels)
            object_labels = tuple(names["objects"])
        for kind, model, labels in (("style", self.style_model, style_labels),
                                    ("object", self.object_model, object_labels)):
            if model.config.num_labels != len(labels):
                raise ValueError(f"the {kind} classifier {getattr(cfg, kind)} has "
                                 f"{model.config.num_labels} classes but {len(labels)} "
                                 f"{kind} labels are given: {', '.join(labels)}")
        self.style_labels, self.object_labels = tuple(style_labels), tuple(object_labels)
        """Class names in the heads' output order; UnlearnCanvas's 'Seed_Images' is the grid's
        'none'."""

    def preprocess(self, images: np.ndarray, size: int) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float (N, 3, size, size) on the judge's device."""
        x = torch.from_numpy(images).to(self.device).permute(0, 3, 1, 2).float() / 255
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode=self.cfg.interpolation,
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.cfg.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.cfg.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _run(self, images: np.ndarray, read) -> dict[str, np.ndarray]:
        """`read(model, outputs)` of both models per batch, concatenated per model."""
        out: dict[str, list[np.ndarray]] = {"style": [], "object": []}
        for start in range(0, len(images), self.cfg.batch_size):
            batch, inputs = images[start:start + self.cfg.batch_size], {}
            for kind, model in (("style", self.style_model), ("object", self.object_model)):
                native = model.config.image_size
                size = self.cfg.image_size or native
                if size not in inputs:
                    inputs[size] = self.preprocess(batch, size)
                out[kind].append(read(model, inputs[size], size != native).cpu().numpy())
        return {kind: np.concatenate(parts) for kind, parts in out.items()}

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(style index into style_labels, object index into object_labels) per uint8 image."""
        out = self._run(images, lambda model, x, resized: model(
            x, interpolate_pos_encoding=resized).logits.argmax(1))
        return out["style"], out["object"]

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        """float (N, 2 x hidden): both models' class-token features, the inputs of their heads."""
        out = self._run(images, lambda model, x, resized: model.vit(
            x, interpolate_pos_encoding=resized).last_hidden_state[:, 0])
        return np.concatenate([out["style"], out["object"]], axis=1)
