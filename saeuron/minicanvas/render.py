"""The MiniCanvas renderer: deterministic synthetic paintings of objects in styles.

An *object* is the thing drawn (a shape with its own outline); a *style* changes the whole
picture (background pattern, palette, texture and line treatment), as an artistic style does.
The pose (position, size, rotation) and the texture phase depend only on the seed, so the same
seed shows the same pose in every style, like a fixed diffusion seed does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from saeuron.names import NO_STYLE

SIZE = 32
"""Side of a rendered image in pixels."""
_SS = 4
"""Supersampling factor: shapes are drawn at SIZE * _SS and box-filtered down (anti-aliasing)."""

OBJECTS: tuple[str, ...] = (
    "circle", "square", "triangle", "cross", "ring",
    "star", "heart", "moon", "arrow", "house",
)
STYLES: tuple[str, ...] = (
    "sunset", "ocean", "forest", "neon", "pastel",
    "sketch", "pop", "granite", "ember", "blueprint",
)
"""Label of the unstyled look (a plain black shape on white), prompted without a style."""


@dataclass(frozen=True)
class Pose:
    """Where and how the object sits in the picture; a function of the seed alone."""

    cx: float
    cy: float
    radius: float
    angle: float


def pose_for_seed(seed: int) -> Pose:
    rng = np.random.default_rng([seed, 0x5A])
    return Pose(
        cx=SIZE / 2 + rng.uniform(-2.5, 2.5),
        cy=SIZE / 2 + rng.uniform(-2.5, 2.5),
        radius=rng.uniform(8.5, 11.0),
        angle=rng.uniform(-15.0, 15.0),
    )


# ---------------------------------------------------------------- object outlines
# Each outline is a polygon in unit coordinates (the object fits the unit disc), y pointing down.

def _regular(n: int, start: float = -90.0) -> list[tuple[float, float]]:
    return [(math.cos(math.radians(start + 360 * i / n)), math.sin(math.radians(start + 360 * i / n)))
            for i in range(n)]


def _star() -> list[tuple[float, float]]:
    pts = []
    for i in range(10):
        r = 1.0 if i % 2 == 0 else 0.42
        a = math.radians(-90 + 36 * i)
        pts.append((r * math.cos(a), r * math.sin(a)))
    return pts


def _heart() -> list[tuple[float, float]]:
    pts = []
    for i in range(64):
        t = 2 * math.pi * i / 64
        x = 16 * math.sin(t) ** 3
        y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
        pts.append((x / 17.0, -y / 17.0 + 0.1))
    return pts


def _circle(n: int = 48) -> list[tuple[float, float]]:
    return _regular(n)


_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "circle": _circle(),
    "square": [(-0.78, -0.78), (0.78, -0.78), (0.78, 0.78), (-0.78, 0.78)],
    "triangle": [(0.0, -1.0), (0.95, 0.75), (-0.95, 0.75)],
    "cross": [(-0.3, -1), (0.3, -1), (0.3, -0.3), (1, -0.3), (1, 0.3), (0.3, 0.3), (0.3, 1),
              (-0.3, 1), (-0.3, 0.3), (-1, 0.3), (-1, -0.3), (-0.3, -0.3)],
    "star": _star(),
    "heart": _heart(),
    "arrow": [(-1, -0.28), (0.1, -0.28), (0.1, -0.75), (1, 0), (0.1, 0.75), (0.1, 0.28), (-1, 0.28)],
    "house": [(0, -1), (0.9, -0.15), (0.65, -0.15), (0.65, 0.9), (-0.65, 0.9), (-0.65, -0.15),
              (-0.9, -0.15)],
}
# Shapes with a hole or a bite: (outer polygon, polygon cut out of it).
_CUTOUTS: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {
    "ring": (_circle(), [(0.5 * x, 0.5 * y) for x, y in _circle()]),
    "moon": (_circle(), [(0.78 * x + 0.5, 0.78 * y - 0.25) for x, y in _circle()]),
}


def _place(points: list[tuple[float, float]], pose: Pose) -> list[tuple[float, float]]:
    c, s = math.cos(math.radians(pose.angle)), math.sin(math.radians(pose.angle))
    r = pose.radius * _SS
    return [((pose.cx * _SS) + r * (c * x - s * y), (pose.cy * _SS) + r * (s * x + c * y))
            for x, y in points]


def object_mask(obj: str, pose: Pose) -> np.ndarray:
    """Anti-aliased coverage of the object, float32 in [0, 1], shape (SIZE, SIZE)."""
    return _downsample(_mask_big(obj, pose))


def _downsample(big: Image.Image) -> np.ndarray:
    return np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32) / 255.0


def _outline(mask_big: Image.Image, width: int) -> Image.Image:
    """The band of a shape within `width` supersampled pixels of its edge."""
    eroded = mask_big.filter(ImageFilter.MinFilter(2 * width + 1))
    return Image.fromarray(np.asarray(mask_big) - np.asarray(eroded))


def _mask_big(obj: str, pose: Pose) -> Image.Image:
    big = Image.new("L", (SIZE * _SS, SIZE * _SS), 0)
    draw = ImageDraw.Draw(big)
    if obj in _CUTOUTS:
        outer, hole = _CUTOUTS[obj]
        draw.polygon(_place(outer, pose), fill=255)
        draw.polygon(_place(hole, pose), fill=0)
    else:
        draw.polygon(_place(_OUTLINES[obj], pose), fill=255)
    return big


# ---------------------------------------------------------------- styles
# A style paints a background from the grid coordinates and a seeded generator, picks the
# object's colour, and decides how the object's shape is drawn (filled, outlined, glowing...).

_Y, _X = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)


def _rgb(hex_colour: str) -> np.ndarray:
    return np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.float32) / 255.0


def _mix(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a * (1 - t[..., None]) + b * t[..., None]


@dataclass(frozen=True)
class Style:
    background: Callable[[np.random.Generator], np.ndarray]
    ink: str
    line: str
    """How the object is drawn: 'fill', 'outline', 'glow' or 'bordered' (fill with a dark edge)."""


def _bg_flat(colour: str) -> Callable[[np.random.Generator], np.ndarray]:
    return lambda rng: np.broadcast_to(_rgb(colour), (SIZE, SIZE, 3)).copy()


def _bg_sunset(rng: np.random.Generator) -> np.ndarray:
    t = np.clip(_Y / (SIZE - 1) + rng.uniform(-0.08, 0.08), 0, 1)
    return _mix(_rgb("#ff5e3a"), _rgb("#ffd23f"), t)


def _bg_ocean(rng: np.random.Generator) -> np.ndarray:
    phase = rng.uniform(0, 2 * np.pi)
    t = 0.5 + 0.5 * np.sin((_X + _Y) * 0.6 + phase)
    return _mix(_rgb("#0b3d91"), _rgb("#2f80ed"), t)


def _bg_forest(rng: np.random.Generator) -> np.ndarray:
    ox, oy = rng.integers(0, 4, size=2)
    dots = (((_X + ox) % 4) < 2) & (((_Y + oy) % 4) < 2)
    return _mix(_rgb("#1e5631"), _rgb("#4caf50"), dots.astype(np.float32))


def _bg_pastel(rng: np.random.Generator) -> np.ndarray:
    t = 0.5 + 0.5 * np.sin(_X * 0.25 + rng.uniform(0, 2 * np.pi))
    return _mix(_rgb("#f8c8dc"), _rgb("#e0d4f7"), t)


def _bg_sketch(rng: np.random.Generator) -> np.ndarray:
    oy = rng.integers(0, 5)
    lines = ((_Y + oy) % 5) == 0
    return _mix(_rgb("#fbf8ef"), _rgb("#9db4d6"), lines.astype(np.float32) * 0.8)


def _bg_pop(rng: np.random.Generator) -> np.ndarray:
    ox, oy = rng.integers(0, 8, size=2)
    checks = ((((_X + ox) // 4) + ((_Y + oy) // 4)) % 2).astype(np.float32)
    return _mix(_rgb("#ffe600"), _rgb("#111111"), checks)


def _bg_granite(rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, size=(SIZE, SIZE)).astype(np.float32)
    return _mix(_rgb("#5f6b7a"), _rgb("#c9d1db"), noise)


def _bg_ember(rng: np.random.Generator) -> np.ndarray:
    noise = rng.uniform(0, 1, size=(SIZE // 2, SIZE // 2)).astype(np.float32)
    noise = np.kron(noise, np.ones((2, 2), dtype=np.float32))
    return _mix(_rgb("#3a0505"), _rgb("#b3200e"), noise)


def _bg_blueprint(rng: np.random.Generator) -> np.ndarray:
    ox, oy = rng.integers(0, 6, size=2)
    grid = (((_X + ox) % 6) == 0) | (((_Y + oy) % 6) == 0)
    return _mix(_rgb("#123a6b"), _rgb("#5d86b8"), grid.astype(np.float32))


_STYLE_TABLE: dict[str, Style] = {
    NO_STYLE: Style(_bg_flat("#ffffff"), "#000000", "fill"),
    "sunset": Style(_bg_sunset, "#3b0a45", "fill"),
    "ocean": Style(_bg_ocean, "#fff3c4", "fill"),
    "forest": Style(_bg_forest, "#8b4513", "bordered"),
    "neon": Style(_bg_flat("#07060f"), "#ff2bd6", "glow"),
    "pastel": Style(_bg_pastel, "#5cc7a8", "fill"),
    "sketch": Style(_bg_sketch, "#202020", "outline"),
    "pop": Style(_bg_pop, "#e3120b", "bordered"),
    "granite": Style(_bg_granite, "#1741c9", "fill"),
    "ember": Style(_bg_ember, "#ffc21a", "fill"),
    "blueprint": Style(_bg_blueprint, "#ffffff", "outline"),
}


def render(obj: str, style: str, seed: int) -> np.ndarray:
    """One picture of `obj` in `style` (or NO_STYLE), uint8 array of shape (SIZE, SIZE, 3)."""
    if obj not in OBJECTS:
        raise ValueError(f"unknown object {obj!r}; MiniCanvas objects are {', '.join(OBJECTS)}")
    if style not in _STYLE_TABLE:
        raise ValueError(f"unknown style {style!r}; MiniCanvas styles are "
                         f"{', '.join(STYLES)} (or {NO_STYLE!r})")
    pose = pose_for_seed(seed)
    look = _STYLE_TABLE[style]
    rng = np.random.default_rng([seed, 0xB6])
    image = look.background(rng)
    ink = _rgb(look.ink)
    big = _mask_big(obj, pose)
    if look.line == "outline":
        image = _mix(image, ink, _downsample(_outline(big, width=5)))
    elif look.line == "bordered":
        image = _mix(image, ink, _downsample(big))
        image = _mix(image, _rgb("#000000"), _downsample(_outline(big, width=4)))
    elif look.line == "glow":
        halo = _downsample(big.filter(ImageFilter.GaussianBlur(10)))
        image = _mix(image, ink * 0.6, np.clip(halo * 1.6, 0, 1))
        image = _mix(image, _rgb("#ffffff"), _downsample(_outline(big, width=3)) * 0.9)
        image = _mix(image, ink, _downsample(big.filter(ImageFilter.MinFilter(7))))
    else:
        image = _mix(image, ink, _downsample(big))
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


def render_batch(objects: list[str], styles: list[str], seeds: list[int]) -> np.ndarray:
    """Pictures for aligned lists of labels and seeds, uint8 (N, SIZE, SIZE, 3)."""
    return np.stack([render(o, s, int(seed)) for o, s, seed in zip(objects, styles, seeds)])
