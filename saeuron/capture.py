"""Capturing UNet blocks during sampling: named blocks, chosen timesteps, conditional half.

A block is named by its module path in the UNet (`up_blocks.1.attentions.1`, as in SD). Its
feature map (B, C, H, W) becomes (B, H*W, C): one vector per spatial position, the SAE's input.

One hook is not a block: `text` (TEXT_HOOK), the prompt's encoding as the UNet receives it
(`encoder_hidden_states`, (B, tokens, width)), one vector per token. Every cross-attention block
reads it, and so does a text-conditioned time embedding (MiniCanvas's), so an edit there reaches
every path by which the prompt enters the UNet (BENCHMARKS.md, "What removes a style"). It is
the same at every step of a sampling run.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.transformers.transformer_2d import Transformer2DModel
from torch import nn

from saeuron.names import TEXT_HOOK

Mode = Literal["output", "delta"]
"""'output': the block's output (residual included); 'delta': output minus input."""

_BLOCK_TYPES = (Transformer2DModel, ResnetBlock2D)


def capturable_blocks(unet: nn.Module) -> list[str]:
    """TEXT_HOOK, and the module paths whose output is a feature map: down/mid/up blocks, their
    attentions, resnets."""
    names = [TEXT_HOOK]
    for name, module in unet.named_modules():
        top = name.split(".")
        if isinstance(module, _BLOCK_TYPES) or (len(top) == 2 and top[0] in ("down_blocks", "up_blocks")) \
                or name == "mid_block":
            names.append(name)
    return names


def resolve_blocks(unet: nn.Module, names: list[str]) -> dict[str, nn.Module | None]:
    """Look the blocks up (TEXT_HOOK: None, it is no module), or raise naming the unknown ones
    and listing the capturable ones."""
    known = capturable_blocks(unet)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown block(s) {unknown}; this UNet's capturable blocks are: "
                         f"{', '.join(known)}")
    if not names:
        raise ValueError(f"no block to capture; choose among: {', '.join(known)}")
    modules = dict(unet.named_modules())
    return {n: None if n == TEXT_HOOK else modules[n] for n in names}


def unet_context(args: tuple, kwargs: dict) -> torch.Tensor:
    """The `encoder_hidden_states` of a UNet call, from its forward arguments."""
    return kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[2]


def with_unet_context(args: tuple, kwargs: dict, context: torch.Tensor) -> tuple[tuple, dict]:
    """A UNet call's arguments with `encoder_hidden_states` replaced by `context`."""
    if "encoder_hidden_states" in kwargs:
        return args, {**kwargs, "encoder_hidden_states": context}
    return (*args[:2], context, *args[3:]), kwargs


def feature_map(output: object) -> torch.Tensor:
    """The (B, C, H, W) tensor a block returns, whatever wrapper it comes in."""
    if isinstance(output, torch.Tensor):
        return output
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, (tuple, list)) and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"cannot find a feature map in a block output of type {type(output).__name__}")


def with_feature_map(output: object, fmap: torch.Tensor) -> object:
    """The block output `output` with its feature map replaced by `fmap` (same wrapper)."""
    if isinstance(output, torch.Tensor):
        return fmap
    if hasattr(output, "sample"):
        output.sample = fmap
        return output
    return (fmap, *output[1:])


def unet_timestep(args: tuple, kwargs: dict) -> int:
    """The timestep value of a UNet call, from its forward arguments."""
    t = kwargs.get("timestep", args[1] if len(args) > 1 else None)
    return int(t.flatten()[0]) if isinstance(t, torch.Tensor) else int(t)


def to_vectors(fmap: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C)."""
    b, c, h, w = fmap.shape
    return fmap.reshape(b, c, h * w).transpose(1, 2)


class Capture:
    """Context manager recording blocks' feature maps at chosen timesteps of a sampling run.

    With classifier-free guidance the UNet sees [unconditional, conditional]; only the
    conditional half is kept. `take()` returns {block: float32 array (B, T, P, F)} for the run.
    """

    def __init__(self, unet: nn.Module, blocks: list[str], *, timesteps: list[int] | None = None,
                 mode: Mode = "output", cfg: bool = True):
        if mode not in ("output", "delta"):
            raise ValueError(f"unknown capture mode {mode!r}; use 'output' or 'delta'")
        if mode == "delta" and TEXT_HOOK in blocks:
            raise ValueError(f"the {TEXT_HOOK!r} hook is the UNet's input, it has no 'delta'; "
                             "capture 'output'")
        self.unet, self.mode, self.cfg = unet, mode, cfg
        self.modules = resolve_blocks(unet, blocks)
        self.wanted = None if timesteps is None else {int(t) for t in timesteps}
        self.timesteps: list[int] = []
        self.records: dict[str, list[torch.Tensor]] = {n: [] for n in self.modules}
        self._now: int | None = None
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "Capture":
        self._handles.append(self.unet.register_forward_pre_hook(self._on_unet, with_kwargs=True))
        for name, module in self.modules.items():
            if module is not None:
                self._handles.append(module.register_forward_hook(self._recorder(name),
                                                                  with_kwargs=True))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_unet(self, _module: nn.Module, args: tuple, kwargs: dict) -> None:
        t = unet_timestep(args, kwargs)
        self._now = t if self.wanted is None or t in self.wanted else None
        if self._now is not None:
            self.timesteps.append(t)
            if TEXT_HOOK in self.modules:
                context = unet_context(args, kwargs)
                if self.cfg:
                    context = context[context.shape[0] // 2:]
                self.records[TEXT_HOOK].append(context.detach().float().cpu())

    def _recorder(self, name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict, output: object) -> None:
            if self._now is None:
                return
            fmap = feature_map(output)
            if self.mode == "delta":
                given = kwargs.get("hidden_states", args[0] if args else None)
                if not isinstance(given, torch.Tensor) or given.shape != fmap.shape:
                    raise ValueError(f"'delta' capture of {name!r} needs an output shaped like "
                                     "its input; capture its 'output' instead")
                fmap = fmap - given
            if self.cfg:
                fmap = fmap[fmap.shape[0] // 2:]
            self.records[name].append(to_vectors(fmap).detach().float().cpu())
        return hook

    def take(self) -> tuple[list[int], dict[str, np.ndarray]]:
        """(timesteps, {block: (B, T, P, F)}) recorded so far, then forget them."""
        out = {n: torch.stack(r, dim=1).numpy() for n, r in self.records.items() if r}
        steps = list(self.timesteps)
        self.timesteps, self.records = [], {n: [] for n in self.modules}
        return steps, out
