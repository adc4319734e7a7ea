"""Deterministic synthetic skin-lesion dataset (dermoscopy-like image + short clinical report).

The layout matches what real users bring (HAM10000-style)::

    OUT_DIR/metadata.csv        image_id,label,patient_id   (image_id without extension)
    OUT_DIR/reports.json        {image_id: report text}
    OUT_DIR/images/<id>.png     RGB, image_size x image_size
    OUT_DIR/README.md
    OUT_DIR/.complete           generation args as JSON, written last

The label depends on *both* modalities: each class is a pair (image pattern, text pattern) from 3 image patterns and
3 text patterns arranged in a cycle (see ``CLASS_PATTERNS``). Every image pattern is shared by exactly two classes and
every text pattern by exactly two, so a unimodal model can at best narrow a sample down to two classes (~50% balanced
accuracy) while image + text identifies it.
"""

from __future__ import annotations

import csv
import functools
import inspect
import json
import math
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

DEMO_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv")

# HAM10000 lesion-image counts (vasc dropped), rescaled to proportions over DEMO_CLASSES.
_HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705}
LONG_TAIL_PROPORTIONS: dict[str, float] = {
    name: count / sum(_HAM10000_COUNTS.values()) for name, count in _HAM10000_COUNTS.items()
}

IMAGE_PATTERNS: tuple[str, ...] = ("irregular_multicolour", "round_uniform_brown", "pearly_pink_vessels")
TEXT_PATTERNS: tuple[str, ...] = ("changing", "waxy_elderly", "scaly_sun")

# A 6-cycle through the bipartite graph image pattern <-> text pattern: neighbouring classes share one modality.
# mel -(image)- df -(text)- akiec -(image)- bcc -(text)- bkl -(image)- nv -(text)- mel
CLASS_PATTERNS: dict[str, tuple[str, str]] = {
    "mel": ("irregular_multicolour", "changing"),
    "nv": ("round_uniform_brown", "changing"),
    "bkl": ("round_uniform_brown", "waxy_elderly"),
    "bcc": ("pearly_pink_vessels", "waxy_elderly"),
    "akiec": ("pearly_pink_vessels", "scaly_sun"),
    "df": ("irregular_multicolour", "scaly_sun"),
}

_FORMAT_VERSION = 1  # bump when the generator's output changes, so cached datasets are regenerated
_DEMO_FILES = frozenset({"metadata.csv", "reports.json", "images", "README.md", ".complete"})
MIN_CLASS_COUNT = 10
MIN_IMAGE_SIZE = 16  # the smallest side the generator draws
_MIN_CLASS_FRACTION = 0.01
_WEAK_CUE_FRACTION = 0.05
_PATIENT_SIZES, _PATIENT_SIZE_PROBS = (1, 2, 3), (0.6, 0.25, 0.15)

# ----------------------------------------------------------------------------------------------------------- text
_SEXES = ("male", "female")
_SITES = (
    "back", "upper back", "chest", "abdomen", "shoulder", "upper arm", "forearm", "thigh",
    "lower leg", "face", "cheek", "scalp", "neck", "hand", "foot", "ear",
)  # fmt: skip
_INTROS = ("{age}-year-old {sex}.", "{Sex}, {age} years.", "{age} y/o {sex} patient.", "{Sex} aged {age}.")
_SITE_SENTENCES = ("Lesion on the {site}.", "Located on the {site}.", "Site: {site}.", "Single lesion, {site}.")
_SYMPTOM_PREFIXES = (
    "Patient reports",
    "Patient mentions",
    "Patient describes",
    "History notes",
    "Referral letter mentions",
)
_SYMPTOM_PHRASES: dict[str, tuple[str, ...]] = {
    "changing": (
        "recent change in size", "recent change in colour", "the mole getting darker",
        "the spot growing over the last few months", "a new mole that appeared this year",
        "a change in shape since last summer", "the lesion becoming more raised", "an evolving pigmented spot",
        "rapid growth recently", "the edges spreading outwards",
    ),
    "waxy_elderly": (
        "a waxy surface", "a stuck-on appearance", "slow growth over many years", "a greasy feel",
        "a lesion present for a decade", "a wart-like texture", "several similar spots on the trunk",
        "a shiny surface", "a crust that comes off and returns", "it catching on clothing",
    ),
    "scaly_sun": (
        "a rough scaly patch", "years of outdoor work", "chronic sun exposure", "a sandpaper-like feel",
        "a firm nodule that dimples when pinched", "flaking that recurs after picking",
        "frequent sunburns as a child", "a hard bump after an insect bite", "a dry patch that will not heal",
        "redness on sun-exposed skin",
    ),
}  # fmt: skip
_DISTRACTORS = (
    "Referred by GP.", "No allergies.", "No family history of skin cancer.", "Non-smoker.",
    "On no regular medication.", "Follow-up in 3 months.", "Photographed for records.", "Mild itching at times.",
    "No bleeding.", "Otherwise well.", "Type 2 diabetes, well controlled.", "Attends with daughter.",
)  # fmt: skip

# ---------------------------------------------------------------------------------------------------------- image
_SKIN_TONES = np.array([[240, 208, 188], [222, 178, 150], [202, 152, 118], [180, 128, 96]], np.float32)
_BROWN_LIGHT, _BROWN_DARK = np.array([148, 96, 60], np.float32), np.array([92, 55, 34], np.float32)
_BLACK, _BLUE_GREY = np.array([42, 30, 28], np.float32), np.array([112, 118, 136], np.float32)
_TAN = np.array([178, 132, 92], np.float32)
_PINK_LIGHT, _PINK_DARK = np.array([232, 150, 152], np.float32), np.array([205, 112, 120], np.float32)
_PEARL, _VESSEL = np.array([248, 226, 226], np.float32), np.array([170, 22, 38], np.float32)
_HAIR = np.array([38, 28, 22], np.float32)
_AMBIGUOUS = np.array([155, 98, 82], np.float32)  # weak-cue lesions are pulled towards this brownish-pink


def default_cache_dir() -> Path:
    """``$MEDFUSION_CACHE/demo`` if set, else ``~/.cache/medfusion/demo``."""
    root = os.environ.get("MEDFUSION_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "medfusion") / "demo"


def make_demo_data(
    out_dir: str | Path, num_samples: int = 2000, image_size: int = 64, seed: int = 0, long_tail: bool = False
) -> Path:
    """Write the synthetic dataset into ``out_dir`` and return it.

    Same arguments give byte-identical ``metadata.csv``/``reports.json`` and identical image pixels. Labels are balanced
    (equal counts, remainder to the first classes) or, with ``long_tail``, follow ``LONG_TAIL_PROPORTIONS`` with every
    class keeping at least 10 samples and 1%. The ``.complete`` marker (generation args as JSON) is written last.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    args = _generation_args(num_samples=num_samples, image_size=image_size, seed=seed, long_tail=long_tail)
    counts = _class_counts(num_samples, long_tail)
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)

    label_seq, text_seq, image_seq = np.random.SeedSequence(seed).spawn(3)
    labels, patients = _assign_patients(np.random.default_rng(label_seq), counts)
    ids = [f"DEMO_{i:06d}" for i in range(num_samples)]

    text_rng, image_rng = np.random.default_rng(text_seq), np.random.default_rng(image_seq)
    patient_info = {p: _patient_info(text_rng, image_rng) for p in dict.fromkeys(patients)}
    reports = {
        i: _make_report(text_rng, CLASS_PATTERNS[y][1], patient_info[p])
        for i, y, p in zip(ids, labels, patients, strict=True)
    }

    grid = _grid(image_size)
    for image_id, label, patient in zip(ids, labels, patients, strict=True):
        pixels = _render_image(image_rng, grid, CLASS_PATTERNS[label][0], patient_info[patient])
        Image.fromarray(pixels, "RGB").save(images_dir / f"{image_id}.png", compress_level=1)
    for stale in set(images_dir.glob("DEMO_*.png")) - {images_dir / f"{i}.png" for i in ids}:
        stale.unlink()

    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["image_id", "label", "patient_id"])
        writer.writerows(zip(ids, labels, patients, strict=True))
    (out / "reports.json").write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(_readme(args, counts), encoding="utf-8")
    (out / ".complete").write_text(json.dumps(args, sort_keys=True) + "\n", encoding="utf-8")
    return out


def ensure_demo_data(out_dir: str | Path, **kwargs: Any) -> Path:
    """Return ``out_dir`` holding a complete dataset for ``make_demo_data(out_dir, **kwargs)``, generating if needed.

    Safe under concurrent callers (e.g. DDP ranks): each generates into a temporary sibling directory and renames it
    into place; a caller that finds a complete dataset with the same args already there uses it. A stale dataset (other
    args, or an interrupted run) is replaced; a non-empty directory that is not a demo dataset is never touched.
    """
    bound = inspect.signature(make_demo_data).bind(out_dir, **kwargs)
    bound.apply_defaults()
    gen_kwargs = {k: v for k, v in bound.arguments.items() if k != "out_dir"}
    args = _generation_args(**gen_kwargs)
    out = Path(out_dir)
    if _is_complete(out, args):
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        make_demo_data(tmp, **gen_kwargs)
        for _ in range(5):
            try:
                os.replace(tmp, out)  # atomic; fails if out is a non-empty directory
                return out
            except OSError:
                if _is_complete(out, args):  # another process won the race
                    return out
                if out.exists() and not set(os.listdir(out)) <= _DEMO_FILES:
                    raise FileExistsError(f"{out} exists and is not a demo dataset; refusing to overwrite it") from None
                stale = out.with_name(f".{out.name}.stale-{uuid.uuid4().hex}")
                try:
                    os.replace(out, stale)
                except FileNotFoundError:  # someone else moved it already
                    continue
                shutil.rmtree(stale, ignore_errors=True)
        raise RuntimeError(f"could not move the generated demo dataset into {out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _generation_args(num_samples: int, image_size: int, seed: int, long_tail: bool) -> dict[str, Any]:
    return {
        "format_version": _FORMAT_VERSION,
        "num_samples": int(num_samples),
        "image_size": int(image_size),
        "seed": int(seed),
        "long_tail": bool(long_tail),
    }


def _is_complete(out: Path, args: dict[str, Any]) -> bool:
    try:
        return json.loads((out / ".complete").read_text(encoding="utf-8")) == args
    except (OSError, ValueError):
        return False


def _class_counts(num_samples: int, long_tail: bool) -> dict[str, int]:
    """Per-class sample counts: balanced, or long-tailed with a per-class floor (largest-remainder rounding)."""
    n_classes = len(DEMO_CLASSES)
    if not long_tail:
        if num_samples < n_classes:
            raise ValueError(f"num_samples must be >= {n_classes}, got {num_samples}")
        base, extra = divmod(num_samples, n_classes)
        return {c: base + (i < extra) for i, c in enumerate(DEMO_CLASSES)}

    floor = max(MIN_CLASS_COUNT, int(np.ceil(_MIN_CLASS_FRACTION * num_samples)))
    if floor * n_classes > num_samples:
        raise ValueError(f"long_tail needs num_samples >= {floor * n_classes}, got {num_samples}")
    fixed: dict[str, int] = {}
    while True:  # classes whose proportional share falls under the floor are pinned to it; the rest share the remainder
        free = [c for c in DEMO_CLASSES if c not in fixed]
        budget = num_samples - sum(fixed.values())
        total = sum(LONG_TAIL_PROPORTIONS[c] for c in free)
        share = {c: budget * LONG_TAIL_PROPORTIONS[c] / total for c in free}
        low = [c for c in free if share[c] < floor]
        if not low:
            break
        fixed.update(dict.fromkeys(low, floor))
    counts = {c: int(share[c]) for c in free}
    by_remainder = sorted(free, key=lambda c: (counts[c] - share[c], DEMO_CLASSES.index(c)))
    for c in by_remainder[: budget - sum(counts.values())]:
        counts[c] += 1
    merged = fixed | counts
    return {c: merged[c] for c in DEMO_CLASSES}


def _assign_patients(rng: np.random.Generator, counts: dict[str, int]) -> tuple[list[str], list[str]]:
    """Group each class into patients of 1-3 images; return per-image labels and patient ids in shuffled order."""
    groups: list[tuple[str, int]] = []
    for label in DEMO_CLASSES:
        left = counts[label]
        while left > 0:
            size = min(left, int(rng.choice(_PATIENT_SIZES, p=_PATIENT_SIZE_PROBS)))
            groups.append((label, size))
            left -= size
    labels, patients = [], []
    for p, (label, size) in enumerate(groups):
        labels += [label] * size
        patients += [f"PAT_{p:05d}"] * size
    order = rng.permutation(len(labels))
    return [labels[i] for i in order], [patients[i] for i in order]


def _patient_info(text_rng: np.random.Generator, image_rng: np.random.Generator) -> dict[str, Any]:
    """Things shared by all images/reports of one patient (one lesion): demographics, site, skin and lesion tone."""
    return {
        "age": int(text_rng.integers(18, 90)),
        "sex": _SEXES[text_rng.integers(len(_SEXES))],
        "site": _SITES[text_rng.integers(len(_SITES))],
        "skin": _interp_colour(_SKIN_TONES, image_rng.uniform(0, len(_SKIN_TONES) - 1)),
        "tone": float(image_rng.uniform(0, 1)),  # light .. dark lesion colour
        "radius": float(image_rng.uniform(0.36, 0.58)),  # fraction of the half-width
    }


def _interp_colour(anchors: np.ndarray, t: float) -> np.ndarray:
    """Piecewise-linear interpolation between RGB anchor rows at fractional index ``t``."""
    i = min(int(t), len(anchors) - 2)
    return anchors[i] + (anchors[i + 1] - anchors[i]) * np.float32(t - i)


def _make_report(rng: np.random.Generator, text_pattern: str, info: dict[str, Any]) -> str:
    """A 3-5 sentence report: demographics, site, 1-2 pattern-specific symptoms, 0-2 class-independent distractors."""
    sex = info["sex"]
    intro = _INTROS[rng.integers(len(_INTROS))].format(age=info["age"], sex=sex, Sex=sex.capitalize())
    site = _SITE_SENTENCES[rng.integers(len(_SITE_SENTENCES))].format(site=info["site"])
    pool = _SYMPTOM_PHRASES[text_pattern]
    phrases = [pool[i] for i in rng.choice(len(pool), size=int(rng.integers(1, 3)), replace=False)]
    symptom = f"{_SYMPTOM_PREFIXES[rng.integers(len(_SYMPTOM_PREFIXES))]} {' and '.join(phrases)}."
    distractors = [_DISTRACTORS[i] for i in rng.choice(len(_DISTRACTORS), size=int(rng.integers(0, 3)), replace=False)]
    body = [site, symptom, *distractors]
    return " ".join([intro, *(body[i] for i in rng.permutation(len(body)))])


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (y, x), shape (size, size) each."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    return np.meshgrid(t, t, indexing="ij")


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


def _render_image(
    rng: np.random.Generator, grid: tuple[np.ndarray, np.ndarray], pattern: str, info: dict[str, Any]
) -> np.ndarray:
    """One dermoscopy-like RGB uint8 image with the cue of ``pattern`` plus nuisance (skin, pose, hairs, noise)."""
    yy, xx = grid
    size = yy.shape[0]
    pixel = size / 64  # line widths are ~1 px at 64x64 and scale with the image

    def uniform(low: float, high: float) -> float:  # python floats keep the float32 arrays float32
        return float(rng.uniform(low, high))

    # Skin: patient tone, blotchy shading and an illumination gradient.
    shade = 1 + 0.04 * _smooth_noise(rng, size, 3) + uniform(-0.08, 0.08) * yy + uniform(-0.08, 0.08) * xx
    img = info["skin"] * shade[..., None]

    # Lesion shape: rotated ellipse whose radius is perturbed by angular harmonics (smooth vs jagged border).
    strength = uniform(0.3, 0.5) if rng.random() < _WEAK_CUE_FRACTION else 1.0
    cy, cx, theta, aspect = uniform(-0.18, 0.18), uniform(-0.18, 0.18), uniform(0, np.pi), uniform(0.7, 1.0)
    dy, dx = yy - cy, xx - cx
    u = dx * math.cos(theta) + dy * math.sin(theta)
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / aspect
    dist, phi = np.hypot(u, v), np.arctan2(v, u)
    radius0 = info["radius"] * uniform(0.9, 1.1)
    ks = np.arange(2, 13)
    if pattern == "irregular_multicolour":
        amps = np.where(ks <= 7, rng.uniform(0.04, 0.1, ks.size), rng.uniform(0, 0.03, ks.size))
    else:
        amps = np.where(ks <= 3, rng.uniform(0, 0.04, ks.size), 0.0)
    amps = strength * amps + (1 - strength) * np.where(ks <= 5, 0.04, 0.0)
    phases = rng.uniform(0, 2 * np.pi, ks.size)
    wobble = sum(
        a * np.cos(k * phi + p) for k, a, p in zip(ks.tolist(), amps.tolist(), phases.tolist(), strict=True) if a > 0
    )
    radius = radius0 * np.maximum(1 + wobble, 0.35)
    alpha = np.clip((radius - dist) / 0.06 + 0.5, 0, 1)[..., None]
    inside = dist / radius  # 0 at the centre, 1 at the border

    # Lesion colour: the image-pattern cue.
    tone = info["tone"]
    texture = 1 + 0.05 * _smooth_noise(rng, size, 8)[..., None]
    brown = _BROWN_LIGHT * (1 - tone) + _BROWN_DARK * tone
    if pattern == "round_uniform_brown":
        lesion = brown * (0.9 + 0.1 * inside[..., None]) * texture
    elif pattern == "irregular_multicolour":
        lesion = brown * texture
        mask = inside < 1
        for colour, quantile in ((_BLACK, 0.7), (_BLUE_GREY, 0.72), (_TAN, 0.8)):
            field = _smooth_noise(rng, size, 5)
            values = field[mask]
            threshold = float(
                np.partition(values, int(quantile * (values.size - 1)))[int(quantile * (values.size - 1))]
            )
            weight = 0.85 / (1 + np.exp((threshold - field) / 0.08))
            lesion = lesion + (colour - lesion) * weight[..., None]
    else:  # pearly_pink_vessels: translucent pink, whitish rolled rim, thin branching red vessels
        pink = _PINK_LIGHT * (1 - tone) + _PINK_DARK * tone
        lesion = (0.8 * pink + 0.2 * info["skin"]) * texture
        rim = np.exp(-(((inside - 0.82) / 0.14) ** 2))[..., None] * 0.6
        lesion = lesion + (_PEARL - lesion) * rim
        walks = [
            _random_walk(rng, (cy, cx) + rng.uniform(-0.5, 0.5, 2) * radius0, 5, 0.35 * radius0, 0.7)
            for _ in range(int(rng.integers(3, 7)))
        ]
        vessels = _draw_polylines(size, walks, width=pixel) * (inside < 0.92)
        lesion = lesion + (_VESSEL - lesion) * (0.85 * vessels)[..., None]
    if strength < 1:
        lesion = strength * lesion + (1 - strength) * _AMBIGUOUS * texture
    img = img * (1 - alpha) + lesion * alpha

    # Nuisance: hairs, dermoscope vignette, sensor noise.
    n_hairs = min(int(rng.poisson(1.0)), 5)
    if n_hairs:
        hairs = [_random_walk(rng, rng.uniform(-1.1, 1.1, 2), 6, 0.3, 0.15) for _ in range(n_hairs)]
        hair = _draw_polylines(size, hairs, width=pixel * uniform(0.8, 1.5))
        img = img + (_HAIR - img) * (0.9 * hair)[..., None]
    if rng.random() < 0.3:
        img = img * np.clip((uniform(1.15, 1.4) - np.hypot(yy, xx)) / 0.12, 0.05, 1)[..., None]
    img = img + rng.standard_normal(img.shape, dtype=np.float32) * uniform(2, 6)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _readme(args: dict[str, Any], counts: dict[str, int]) -> str:
    rows = "\n".join(f"| {c} | {CLASS_PATTERNS[c][0]} | {CLASS_PATTERNS[c][1]} | {counts[c]} |" for c in DEMO_CLASSES)
    return f"""# medfusion synthetic demo dataset

Synthetic dermoscopy-like lesion images with short clinical reports, generated by
`medfusion.data.demo.make_demo_data` with args `{json.dumps(args, sort_keys=True)}`.
Fully deterministic given these args (numpy `default_rng(seed)` streams); not real patient data.

Each class is a pair (image pattern, text pattern). Every image pattern is shared by two classes and every text
pattern by two, so image-only or text-only models can at best narrow a sample to two classes; both modalities are
needed to identify it. Nuisance: skin tone, lesion position/size/rotation, hairs, vignette, noise; ~5% of images have
a weakened image cue. Report demographics, body site and distractor sentences are independent of the class. All
images of a patient (`patient_id`, 1-3 images) share the label.

| label | image pattern | text pattern | images |
|---|---|---|---|
{rows}

Files: `metadata.csv` (image_id,label,patient_id), `reports.json` ({{image_id: text}}), `images/<image_id>.png`.
"""
