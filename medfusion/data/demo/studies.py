"""The study-level demo: studies of 1-4 images, of which one shows the finding.

Layout (written by :func:`make_study_data`)::

    OUT_DIR/metadata.csv        image_id,study_id,label   (one row per image; a study's rows share its label)
    OUT_DIR/images/<id>.png     RGB grey, image_size square
    OUT_DIR/README.md
    OUT_DIR/.complete           generation args as JSON, written last

A study has 1, 2, 3 or 4 images (equally often) of noise; exactly one of them, at a random place in the study,
shows a bright blob in one quadrant: that quadrant is the class (``upper_left``, ``upper_right``, ``lower_left``,
``lower_right``, balanced over studies). Perfect readers: the study's first image alone
1/4 (1 + 1/2 + 1/3 + 1/4) + (1 - 0.52) / 4 = 0.64; all its images (``data.study_column: study_id``) 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfusion.data.demo.generate import balanced_labels, finish_dataset, start_dataset
from medfusion.data.demo.images import save_png
from medfusion.data.demo.volumes import VOLUME_CLASSES, blob

STUDY_CLASSES = VOLUME_CLASSES
FORMAT_VERSION = 1


def study_args(num_studies: int, image_size: int, seed: int) -> dict[str, int | str]:
    """What ``.complete`` records: the arguments and the format."""
    if image_size < 32:
        raise ValueError(f"the study demo draws at 32 px or more, got image_size={image_size}")
    if num_studies < len(STUDY_CLASSES):
        raise ValueError(f"num_studies must be >= {len(STUDY_CLASSES)}, got {num_studies}")
    return {"kind": "studies", "format_version": FORMAT_VERSION, "num_studies": num_studies,
            "image_size": image_size, "seed": seed}  # fmt: skip


def make_study_data(out_dir: str | Path, num_studies: int = 600, image_size: int = 64, seed: int = 0) -> Path:
    """Write the study demo into ``out_dir`` and return it; the same arguments give the same files."""
    args = study_args(num_studies, image_size, seed)
    out = start_dataset(out_dir)
    rng = np.random.default_rng(seed)
    labels = balanced_labels(rng, STUDY_CLASSES, num_studies)
    rows = []
    for s, label in enumerate(labels):
        study = f"ST_{s:05d}"
        count = int(rng.integers(1, 5))
        finding = int(rng.integers(count))
        for j in range(count):
            grey = rng.normal(90, 18, (image_size, image_size)).astype(np.float32)
            if j == finding:
                grey += 110 * blob(image_size, STUDY_CLASSES.index(label), rng)
            pixels = np.repeat(np.clip(grey, 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
            image_id = f"{study}_{j}"
            save_png(pixels, out / "images" / f"{image_id}.png")
            rows.append([image_id, study, label])
    return finish_dataset(out, ["image_id", "study_id", "label"], rows, "medfusion study demo", __doc__ or "", args)
