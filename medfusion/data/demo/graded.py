"""The graded demo: a retinopathy-like severity grade, seen through a noisy image and a noisy report.

Layout (written by :func:`make_graded_data`)::

    OUT_DIR/metadata.csv        image_id,label,patient_id,eye   (label: one of GRADES; one case per patient)
    OUT_DIR/reports.json        {image_id: exam note}
    OUT_DIR/images/<id>.png     RGB, image_size square: a fundus-like disc with dark red dots (haemorrhages)
    OUT_DIR/README.md
    OUT_DIR/.complete           generation args as JSON, written last

Each case has a latent severity ``s ~ Uniform(0, 5)``; its grade is ``floor(s)``: ``none``, ``mild``, ``moderate``,
``severe``, ``proliferative`` (in this order; about a fifth each). The image shows ``round(2.5 (s + e_i))`` dots
and the report one of ten words for ``floor(2 (s + e_t))`` (``absent`` ... ``confluent`` haemorrhages), with
independent noises ``e_i, e_t ~ Normal(0, 0.6)`` and class-independent distractors (vessels, tint, brightness;
eye, filler sentences). Each modality alone tells the grade up to a neighbour; both together narrow it further.
A reader's mistakes are mostly one grade off, so a metric of graded error (quadratic weighted kappa) tells apart
models that accuracy scores alike.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medfusion.data.demo.generate import finish_dataset, start_dataset
from medfusion.data.demo.images import save_png

GRADES = ("none", "mild", "moderate", "severe", "proliferative")
FORMAT_VERSION = 1
NOISE = 0.6  # the standard deviation of each modality's reading of the severity, in grades
WORDS = ("absent", "isolated", "sparse", "occasional", "scattered", "several", "many", "numerous", "extensive",
         "confluent")  # fmt: skip
_FILLERS = ("Pupils dilated.", "Media clear.", "Patient cooperative.", "Intraocular pressure normal.",
            "Follow-up arranged.", "Known diabetic.", "Vision stable.", "Image quality adequate.")  # fmt: skip


def graded_args(num_samples: int, image_size: int, seed: int) -> dict[str, int | str]:
    """What ``.complete`` records: the arguments and the format."""
    if image_size < 32:
        raise ValueError(f"the graded demo draws at 32 px or more, got image_size={image_size}")
    if num_samples < len(GRADES) * 2:
        raise ValueError(f"num_samples must be >= {len(GRADES) * 2}, got {num_samples}")
    return {"kind": "graded", "format_version": FORMAT_VERSION, "num_samples": num_samples,
            "image_size": image_size, "seed": seed}  # fmt: skip


def render_fundus(rng: np.random.Generator, size: int, dots: int) -> np.ndarray:
    """A fundus-like disc (random tint, brightness and vessels) with ``dots`` dark red dots inside it."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    centre, radius = size / 2, size * 0.47
    r = np.hypot(x - centre, y - centre) / radius
    base = rng.uniform([170, 70, 25], [220, 110, 50]).astype(np.float32) * rng.uniform(0.85, 1.1)
    image = base * (1.1 - 0.35 * r[..., None] ** 2) + rng.normal(0, 5, (size, size, 3)).astype(np.float32)
    disc_x, disc_y = centre + rng.uniform(-0.3, 0.3, 2) * size
    image[np.hypot(x - disc_x, y - disc_y) < size * 0.07] = rng.uniform([235, 200, 140], [255, 230, 170])
    for _ in range(int(rng.integers(3, 6))):  # vessels: dark sinuous lines from the optic disc
        angle, bend = rng.uniform(0, 2 * np.pi), rng.uniform(-1.5, 1.5)
        t = np.linspace(0, size * 0.45, 4 * size)
        vx = disc_x + t * np.cos(angle + bend * t / size)
        vy = disc_y + t * np.sin(angle + bend * t / size)
        keep = (vx >= 0) & (vx < size) & (vy >= 0) & (vy < size)
        image[vy[keep].astype(int), vx[keep].astype(int)] *= 0.7
    for _ in range(dots):
        angle, distance = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0.02, 0.8))
        dx, dy = centre + distance * np.cos(angle), centre + distance * np.sin(angle)
        dot_r = rng.uniform(0.025, 0.04) * size
        image[np.hypot(x - dx, y - dy) <= dot_r] = rng.uniform([90, 10, 10], [120, 25, 20])
    image[r > 1] = 0
    return np.clip(image, 0, 255).astype(np.uint8)


def exam_note(rng: np.random.Generator, reading: float, eye: str) -> str:
    """The report: the haemorrhage word for a noisy ``reading`` of the severity, the eye and fillers."""
    word = WORDS[int(np.clip(np.floor(2 * reading), 0, len(WORDS) - 1))]
    fillers = list(rng.choice(_FILLERS, size=int(rng.integers(1, 3)), replace=False))
    sentences = [f"Fundus photograph, {eye} eye.", f"{word.capitalize()} retinal haemorrhages.", *fillers]
    order = [0, *rng.permutation(np.arange(1, len(sentences))).tolist()]
    return " ".join(sentences[i] for i in order)


def make_graded_data(out_dir: str | Path, num_samples: int = 1500, image_size: int = 64, seed: int = 0) -> Path:
    """Write the graded demo into ``out_dir`` and return it; the same arguments give the same files."""
    args = graded_args(num_samples, image_size, seed)
    out = start_dataset(out_dir)
    rng = np.random.default_rng(seed)
    rows, reports = [], {}
    for i in range(num_samples):
        image_id, severity = f"GR_{i:06d}", rng.uniform(0, len(GRADES))
        eye = str(rng.choice(["left", "right"]))
        dots = max(0, round(2.5 * (severity + rng.normal(0, NOISE))))
        save_png(render_fundus(rng, image_size, dots), out / "images" / f"{image_id}.png")
        reports[image_id] = exam_note(rng, severity + rng.normal(0, NOISE), eye)
        rows.append([image_id, GRADES[min(int(severity), len(GRADES) - 1)], f"P{i:06d}", eye])
    (out / "reports.json").write_text(json.dumps(reports, indent=1) + "\n", encoding="utf-8")
    return finish_dataset(
        out, ["image_id", "label", "patient_id", "eye"], rows, "medfusion graded demo", __doc__ or "", args
    )
