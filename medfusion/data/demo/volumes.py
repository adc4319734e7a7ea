"""The 2.5D demo: slice series whose label shows in the neighbours of the slice a row names more than in it.

Layout (written by :func:`make_volume_data`)::

    OUT_DIR/metadata.csv                      image_id,label,image_path
    OUT_DIR/images/<id>/slice_<jj>.png        the case's slices 00 .. 08, RGB grey, image_size square
    OUT_DIR/README.md
    OUT_DIR/.complete                         generation args as JSON, written last

Each case is a volume of 9 slices of noise. The row names one slice (anywhere, volume edges included). A bright
blob lies in one quadrant of the two slices before and the two after it: that quadrant is the class
(``upper_left``, ``upper_right``, ``lower_left``, ``lower_right``, balanced). The named slice itself shows the blob
in 35 % of cases; slices three or more away hold decoys in random quadrants. Perfect readers: the named slice
alone 0.35 + 0.65 / 4 = 0.51; the slice and two neighbours on each side (``data.slices: {image: {neighbours: 2}}``)
1.0, also at a volume's edge, where the neighbours that exist show it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfusion.data.demo.generate import balanced_labels, finish_dataset, start_dataset
from medfusion.data.demo.images import save_png

VOLUME_CLASSES = ("upper_left", "upper_right", "lower_left", "lower_right")
SLICES = 9
FORMAT_VERSION = 1
CENTRE_SHOWS = 0.35


def volume_args(num_samples: int, image_size: int, seed: int) -> dict[str, int | str]:
    """What ``.complete`` records: the arguments and the format."""
    if image_size < 32:
        raise ValueError(f"the 2.5D demo draws at 32 px or more, got image_size={image_size}")
    if num_samples < len(VOLUME_CLASSES):
        raise ValueError(f"num_samples must be >= {len(VOLUME_CLASSES)}, got {num_samples}")
    return {"kind": "volumes", "format_version": FORMAT_VERSION, "num_samples": num_samples,
            "image_size": image_size, "seed": seed}  # fmt: skip


def blob(size: int, quadrant: int, rng: np.random.Generator) -> np.ndarray:
    """A bright disc in ``quadrant`` (0 upper left, 1 upper right, 2 lower left, 3 lower right)."""
    half = size / 2
    cx = rng.uniform(0.25, 0.75) * half + (half if quadrant % 2 else 0)
    cy = rng.uniform(0.25, 0.75) * half + (half if quadrant >= 2 else 0)
    y, x = np.mgrid[0:size, 0:size]
    return ((x - cx) ** 2 + (y - cy) ** 2 <= (size / 10) ** 2).astype(np.float32)


def render_volume(rng: np.random.Generator, size: int, centre: int, quadrant: int) -> list[np.ndarray]:
    """The 9 slices of one case (uint8 RGB, grey)."""
    slices = []
    shows = rng.random() < CENTRE_SHOWS
    for j in range(SLICES):
        grey = rng.normal(90, 18, (size, size)).astype(np.float32)
        distance = abs(j - centre)
        if 1 <= distance <= 2 or (distance == 0 and shows):
            grey += 110 * blob(size, quadrant, rng)
        elif distance >= 3 and rng.random() < 0.5:
            grey += 110 * blob(size, int(rng.integers(4)), rng)  # a decoy, too far away to count
        pixels = np.clip(grey, 0, 255).astype(np.uint8)
        slices.append(np.repeat(pixels[..., None], 3, axis=-1))
    return slices


def make_volume_data(out_dir: str | Path, num_samples: int = 800, image_size: int = 64, seed: int = 0) -> Path:
    """Write the 2.5D demo into ``out_dir`` and return it; the same arguments give the same files."""
    args = volume_args(num_samples, image_size, seed)
    out = start_dataset(out_dir)
    rng = np.random.default_rng(seed)
    labels = balanced_labels(rng, VOLUME_CLASSES, num_samples)
    rows = []
    for i, label in enumerate(labels):
        case = f"VOL_{i:05d}"
        centre = int(rng.integers(SLICES))
        (out / "images" / case).mkdir(exist_ok=True)
        for j, pixels in enumerate(render_volume(rng, image_size, centre, VOLUME_CLASSES.index(label))):
            save_png(pixels, out / "images" / case / f"slice_{j:02d}.png")
        rows.append([case, label, f"{case}/slice_{centre:02d}.png"])
    return finish_dataset(out, ["image_id", "label", "image_path"], rows, "medfusion 2.5D demo", __doc__ or "", args)
