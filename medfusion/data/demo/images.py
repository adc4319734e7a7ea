"""Dermoscopy-like and clinical-photo-like lesion images: the image cue (one of ``IMAGE_PATTERNS``, or none) plus
nuisance (skin tone, lesion pose and size, hairs, vignette, noise)."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

_SKIN_TONES = np.array([[240, 208, 188], [222, 178, 150], [202, 152, 118], [180, 128, 96]], np.float32)
_BROWN_LIGHT, _BROWN_DARK = np.array([148, 96, 60], np.float32), np.array([92, 55, 34], np.float32)
_BLACK, _BLUE_GREY = np.array([42, 30, 28], np.float32), np.array([112, 118, 136], np.float32)
_TAN = np.array([178, 132, 92], np.float32)
_PINK_LIGHT, _PINK_DARK = np.array([232, 150, 152], np.float32), np.array([205, 112, 120], np.float32)
_PEARL, _VESSEL = np.array([248, 226, 226], np.float32), np.array([170, 22, 38], np.float32)
_HAIR = np.array([38, 28, 22], np.float32)
# Per view: lesion scale, centre jitter, border softness, illumination tilt, mean hairs, vignette probability.
_VIEW_STYLE: dict[str, tuple[float, float, float, float, float, float]] = {
    "dermoscopic": (1.0, 0.18, 0.06, 0.08, 1.0, 0.3),
    "clinical": (0.7, 0.25, 0.09, 0.14, 0.5, 0.0),
}


def lesion_look(rng: np.random.Generator) -> dict[str, Any]:
    """What all images of one patient (one lesion) share: skin colour, lesion tone and size (class-free)."""
    return {
        "skin": _interp_colour(_SKIN_TONES, rng.uniform(0, len(_SKIN_TONES) - 1)),
        "tone": float(rng.uniform(0, 1)),  # light .. dark lesion colour
        "radius": float(rng.uniform(0.36, 0.58)),  # fraction of the half-width
    }


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (y, x), shape (size, size) each."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t, indexing="ij")


def save_png(pixels: np.ndarray, path: Any) -> None:
    Image.fromarray(pixels, "RGB").save(path, compress_level=1)


def render_image(
    rng: np.random.Generator,
    coords: tuple[np.ndarray, np.ndarray],
    pattern: str | None,
    look: dict[str, Any],
    view: str = "dermoscopic",
) -> np.ndarray:
    """One RGB uint8 image of the lesion ``look`` in ``view`` showing ``pattern``'s cue, or with ``pattern=None`` a
    featureless lesion drawn the same way for every class (smooth border, even brownish-pink colour)."""
    yy, xx = coords
    size = yy.shape[0]
    pixel = size / 64  # line widths are ~1 px at 64x64 and scale with the image
    scale, jitter, softness, tilt, hairs_mean, vignette_p = _VIEW_STYLE[view]

    def uniform(low: float, high: float) -> float:  # python floats keep the float32 arrays float32
        return float(rng.uniform(low, high))

    # Skin: patient tone, blotchy shading and an illumination gradient.
    shade = 1 + 0.04 * _smooth_noise(rng, size, 3) + uniform(-tilt, tilt) * yy + uniform(-tilt, tilt) * xx
    img = look["skin"] * shade[..., None]

    # Lesion shape: rotated ellipse whose radius is perturbed by angular harmonics (smooth vs jagged border).
    cy, cx, theta, aspect = uniform(-jitter, jitter), uniform(-jitter, jitter), uniform(0, np.pi), uniform(0.7, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
    dist, phi = np.hypot(u, v), np.arctan2(v, u)
    radius0 = scale * look["radius"] * uniform(0.9, 1.1)
    ks = np.arange(2, 13)
    if pattern == "irregular_multicolour":
        amps = np.where(ks <= 7, rng.uniform(0.04, 0.1, ks.size), rng.uniform(0, 0.03, ks.size))
    elif pattern is None:
        amps = np.where(ks <= 5, rng.uniform(0, 0.05, ks.size), 0.0)
    else:
        amps = np.where(ks <= 3, rng.uniform(0, 0.04, ks.size), 0.0)
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    wobble = sum(
        a * np.cos(k * phi + p) for k, a, p in zip(ks.tolist(), amps.tolist(), phases.tolist(), strict=True) if a > 0
    )
    radius = radius0 * np.maximum(1 + wobble, 0.35)
    alpha = np.clip((radius - dist) / softness + 0.5, 0, 1)[..., None]
    inside = dist / radius  # 0 at the centre, 1 at the border
    lesion = _lesion_colour(rng, pattern, look, inside, (cy, cx), radius0, pixel)
    img = img * (1 - alpha) + lesion * alpha

    # Nuisance: hairs, dermoscope vignette, sensor noise.
    n_hairs = min(int(rng.poisson(hairs_mean)), 5)
    if n_hairs:
        hairs = [_random_walk(rng, rng.uniform(-1.1, 1.1, 2), 6, 0.3, 0.15) for _ in range(n_hairs)]
        hair = _draw_polylines(size, hairs, width=pixel * uniform(0.8, 1.5))
        img = img + (_HAIR - img) * (0.9 * hair)[..., None]
    if rng.random() < vignette_p:
        img = img * np.clip((uniform(1.15, 1.4) - np.hypot(yy, xx)) / 0.12, 0.05, 1)[..., None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * uniform(2, 6)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _lesion_colour(
    rng: np.random.Generator,
    pattern: str | None,
    look: dict[str, Any],
    inside: np.ndarray,
    centre: tuple[float, float],
    radius0: float,
    pixel: float,
) -> np.ndarray:
    """The lesion's RGB field (size, size, 3): the image-pattern cue."""
    size = inside.shape[0]
    tone = look["tone"]
    texture = 1 + 0.05 * _smooth_noise(rng, size, 8)[..., None]
    brown = _BROWN_LIGHT * (1 - tone) + _BROWN_DARK * tone
    pink = _PINK_LIGHT * (1 - tone) + _PINK_DARK * tone
    if pattern is None:
        return (0.55 * brown + 0.45 * pink) * (0.95 + 0.05 * inside[..., None]) * texture
    if pattern == "round_uniform_brown":
        return brown * (0.9 + 0.1 * inside[..., None]) * texture
    if pattern == "irregular_multicolour":
        lesion = brown * texture
        mask = inside < 1
        for colour, quantile in ((_BLACK, 0.7), (_BLUE_GREY, 0.72), (_TAN, 0.8)):
            field = _smooth_noise(rng, size, 5)
            values = field[mask]
            k = int(quantile * (values.size - 1))
            threshold = float(np.partition(values, k)[k])
            weight = 0.85 / (1 + np.exp((threshold - field) / 0.08))
            lesion = lesion + (colour - lesion) * weight[..., None]
        return lesion
    if pattern != "pearly_pink_vessels":
        raise ValueError(f"unknown image pattern {pattern!r}")
    # Translucent pink, whitish rolled rim, thin branching red vessels.
    lesion = (0.8 * pink + 0.2 * look["skin"]) * texture
    rim = np.exp(-(((inside - 0.82) / 0.14) ** 2))[..., None] * 0.6
    lesion = lesion + (_PEARL - lesion) * rim
    walks = [
        _random_walk(rng, centre + rng.uniform(-0.5, 0.5, 2) * radius0, 5, 0.35 * radius0, 0.7)
        for _ in range(int(rng.integers(3, 7)))
    ]
    vessels = _draw_polylines(size, walks, width=pixel) * (inside < 0.92)
    return lesion + (_VESSEL - lesion) * (0.85 * vessels)[..., None]


def _interp_colour(anchors: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear interpolation between RGB anchor rows at fractional index ``t``."""
    i = min(int(t), len(anchors) - 2)
    return anchors[i] + (anchors[i + 1] - anchors[i]) * np.float32(t - i)


@functools.lru_cache
def _upsample_weights(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """Left-neighbour indices and interpolation weights for bilinear upsampling of cells+1 -> size points."""
    t = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(t.astype(int), cells - 1)
    return i, t - i.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise: a (cells+1)^2 gaussian grid, bilinearly upsampled to (size, size)."""
    coarse = rng.standard_normal((cells + 1, cells + 1), dtype=np.float32)
    i, f = _upsample_weights(size, cells)
    rows = coarse[i] * (1 - f[:, None]) + coarse[i + 1] * f[:, None]  # (size, cells+1)
    return rows[:, i] * (1 - f) + rows[:, i + 1] * f


def _draw_polylines(size: int, polylines: list[np.ndarray], width: float) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of polylines ((n, 2) (y, x) points in [-1, 1]), ``width`` in output pixels."""
    canvas = Image.new("L", (2 * size, 2 * size))  # drawn at 2x, box-downsampled for anti-aliasing
    draw = ImageDraw.Draw(canvas)
    for line in polylines:
        points = [((x + 1) * size, (y + 1) * size) for y, x in line.tolist()]
        draw.line(points, fill=255, width=max(1, round(2 * width)), joint="curve")
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float32) / 255


def _random_walk(rng: np.random.Generator, start: np.ndarray, steps: int, step: float, turn: float) -> np.ndarray:
    """A wiggly polyline of ``steps`` segments from ``start`` (vessels, hairs)."""
    angles = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.uniform(-turn, turn, steps))
    moves = step * np.stack([np.sin(angles), np.cos(angles)], 1) * rng.uniform(0.6, 1.4, (steps, 1))
    return np.vstack([start, start + np.cumsum(moves, 0)]).astype(np.float32)
