"""Judges of a world file (saeuron.world_file): transformers image classifiers, CLIP zero-shot
over the concept names, timm-format ViTs, or UnlearnCanvas's own classifiers, each with the
GridJudge interface (saeuron.judging).

Nothing is downloaded: every judge loads from local folders or files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import numpy as np
import torch
from pydantic import Field

from saeuron.config import Config
from saeuron.names import NO_STYLE
from saeuron.vit_judge import ViTJudge, ViTJudgeConfig



class TransformersJudgeSpec(Config):
    kind: Literal["transformers"] = "transformers"
    style: str = Field(..., description="Folder of a transformers image classifier of the "
                       "styles (AutoModelForImageClassification; its id2label names them).")
    object: str = Field(..., description="Folder of the object classifier, likewise.")
    unstyled_label: str = Field(NO_STYLE, description="The style classifier's label of "
                                "unstyled pictures (the grid's 'none' row).")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per classifier call.")


class ClipJudgeSpec(Config):
    kind: Literal["clip"] = "clip"
    path: str = Field(..., description="Folder of a transformers CLIP model with its processor.")
    style_prompt: str = Field("a picture in {style} style.", description="Text of each style "
                              "class; {style} is the style's name (underscores as spaces).")
    unstyled_prompt: str = Field("a plain photo.", description="Text of the unstyled class.")
    object_prompt: str = Field("a picture of a {object}.", description="Text of each object "
                               "class.")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per model call.")


class TimmJudgeSpec(Config):
    kind: Literal["timm"] = "timm"
    style: str = Field(..., description="Style classifier: a timm ViT state dict (.pth, .pt, "
                       ".safetensors) whose classes are style_labels.")
    object: str = Field(..., description="Object classifier, the same format.")
    style_labels: list[str] | None = Field(None, description="Style class names in output "
                                           "order (default: the world's styles, then 'none').")
    object_labels: list[str] | None = Field(None, description="Object class names (default: "
                                            "the world's objects).")
    heads: int | None = Field(None, ge=1, le=256, description="Attention heads (default: "
                              "hidden size / 64).")
    batch_size: int = Field(64, ge=1, le=4096, description="Images per classifier call.")


JudgeSpec = Annotated[Union[TransformersJudgeSpec, ClipJudgeSpec, TimmJudgeSpec, ViTJudgeConfig],
                      Field(discriminator="kind")]


def _folder(path: str, what: str) -> Path:
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{what} {path!r} is not a transformers model folder (no config.json)")
    return folder


def _batches(images: np.ndarray, size: int):
    for start in range(0, len(images), size):
        yield list(images[start:start + size])


class TransformersJudge:
    """Two transformers image classifiers; the features of the Frechet distances are what their
    heads (`model.classifier`) read."""

    def __init__(self, spec: TransformersJudgeSpec, device: str | torch.device = "cpu"):
        from transformers import AutoImageProcessor, AutoModelForImageClassification

        self.spec, self.device = spec, torch.device(device)
        self.models, self.processors, labels = {}, {}, {}
        for kind in ("style", "object"):
            folder = _folder(getattr(spec, kind), f"the {kind} classifier")
            model = AutoModelForImageClassification.from_pretrained(folder).eval().to(self.device)
            if not isinstance(getattr(model, "classifier", None), torch.nn.Module):
                raise ValueError(f"the {kind} classifier {folder} has no `classifier` head "
                                 f"({type(model).__name__})")
            self.models[kind] = model
            self.processors[kind] = AutoImageProcessor.from_pretrained(folder)
            labels[kind] = [model.config.id2label[i] for i in range(model.config.num_labels)]
        self.style_labels = tuple(NO_STYLE if s == spec.unstyled_label else s
                                  for s in labels["style"])
        self.object_labels = tuple(labels["object"])

    def _run(self, kind: str, images: np.ndarray):
        model, processor = self.models[kind], self.processors[kind]
        seen: list[torch.Tensor] = []
        handle = model.classifier.register_forward_pre_hook(
            lambda _, args: seen.append(args[0].flatten(1)))
        try:
            logits = [model(pixel_values=processor(images=batch, return_tensors="pt")
                            ["pixel_values"].to(self.device)).logits
                      for batch in _batches(images, self.spec.batch_size)]
        finally:
            handle.remove()
        return torch.cat(logits).cpu().numpy(), torch.cat(seen).float().cpu().numpy()

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self._run("style", images)[0].argmax(1), self._run("object", images)[0].argmax(1)

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self._run(kind, images)[1] for kind in ("style", "object")], 1)


class ClipJudge:
    """CLIP zero-shot: a picture's style (object) is the class text it is most similar to; its
    features are CLIP's image embedding."""

    def __init__(self, spec: ClipJudgeSpec, styles: tuple[str, ...], objects: tuple[str, ...],
                 device: str | torch.device = "cpu"):
        from transformers import CLIPModel, CLIPProcessor

        folder = _folder(spec.path, "the CLIP model")
        self.spec, self.device = spec, torch.device(device)
        self.model = CLIPModel.from_pretrained(folder).eval().to(self.device)
        self.processor = CLIPProcessor.from_pretrained(folder)
        self.style_labels = tuple(styles) + (NO_STYLE,)
        self.object_labels = tuple(objects)
        word = lambda name: name.replace("_", " ")  # noqa: E731
        texts = ([spec.style_prompt.format(style=word(s)) for s in styles] + [spec.unstyled_prompt]
                 + [spec.object_prompt.format(object=word(o)) for o in objects])
        with torch.no_grad():
            tokens = self.processor(text=texts, return_tensors="pt", padding=True).to(self.device)
            pooled = self.model.text_model(**tokens).pooler_output
            text = torch.nn.functional.normalize(self.model.text_projection(pooled), dim=-1)
        n = len(self.style_labels)
        self.text = {"style": text[:n], "object": text[n:]}

    def _images(self, images: np.ndarray) -> torch.Tensor:
        """CLIP's normalised image embeddings, (N, projection dim)."""
        out = []
        for batch in _batches(images, self.spec.batch_size):
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            feats = self.model.vision_model(pixel_values=pixels.to(self.device)).pooler_output
            out.append(torch.nn.functional.normalize(self.model.visual_projection(feats), dim=-1))
        return torch.cat(out)

    @torch.no_grad()
    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self._images(images)
        return tuple((x @ self.text[kind].T).argmax(1).cpu().numpy() for kind in ("style", "object"))

    @torch.no_grad()
    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._images(images).float().cpu().numpy()


def load_judge(spec: TransformersJudgeSpec | ClipJudgeSpec | TimmJudgeSpec | ViTJudgeConfig,
               styles: tuple[str, ...], objects: tuple[str, ...], device: str = "cpu"):
    """The judge `spec` describes, for a world of these styles and objects."""
    if isinstance(spec, TransformersJudgeSpec):
        return TransformersJudge(spec, device)
    if isinstance(spec, ClipJudgeSpec):
        return ClipJudge(spec, styles, objects, device)
    if isinstance(spec, ViTJudgeConfig):
        return ViTJudge(spec, device)

    labels = {"style": spec.style_labels or [*styles, NO_STYLE],
              "object": spec.object_labels or list(objects)}
    cfg = ViTJudgeConfig(style=spec.style, object=spec.object, heads=spec.heads,
                         batch_size=spec.batch_size)
    return ViTJudge(cfg, device, style_labels=tuple(labels["style"]),
                    object_labels=tuple(labels["object"]))
