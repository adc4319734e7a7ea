"""The global-local demo: a lesion whose class needs both a fine texture inside it and a cue around it.

Layout (written by :func:`make_global_local_data`)::

    OUT_DIR/metadata.csv    image_id,label,x0,y0,x1,y1   (the lesion's bounding box in pixels, x1/y1 exclusive)
    OUT_DIR/images/<id>.png RGB, image_size x image_size (256 by default)
    OUT_DIR/README.md
    OUT_DIR/.complete       generation args as JSON, written last

Each image is skin with one small lesion (radius 14-22 px at 256 px, anywhere) and a class from two bits:

- **texture** (inside the lesion): stripes one pixel wide, horizontal or vertical. Seen at full resolution in the
  lesion crop; a 64 px view of the whole image averages them away (four pixels per pixel), so it cannot tell them.
- **context** (around it): satellite spots (3-6 dark dots on the skin, well outside the lesion's box) or none.
  Seen in the whole image; the lesion crop never holds them.

The classes are ``clear_horizontal``, ``clear_vertical``, ``spotted_horizontal`` and ``spotted_vertical``
(balanced). Perfect readers: the global 64 px view alone 0.5 (context only), the lesion crop alone 0.5 (texture
only), both 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medfusion.data.demo.generate import balanced_labels, finish_dataset, start_dataset
from medfusion.data.demo.images import save_png

GLOBAL_LOCAL_CLASSES = ("clear_horizontal", "clear_vertical", "spotted_horizontal", "spotted_vertical")
FORMAT_VERSION = 1
_GAP = 12  # pixels between a satellite spot and the lesion's box


def global_local_args(num_samples: int, image_size: int, seed: int) -> dict[str, int | str]:
    """What ``.complete`` records: the arguments and the format."""
    if image_size < 128:
        raise ValueError(f"the global-local demo draws at 128 px or more, got image_size={image_size}")
    if num_samples < len(GLOBAL_LOCAL_CLASSES):
        raise ValueError(f"num_samples must be >= {len(GLOBAL_LOCAL_CLASSES)}, got {num_samples}")
    return {"kind": "global_local", "format_version": FORMAT_VERSION, "num_samples": num_samples,
            "image_size": image_size, "seed": seed}  # fmt: skip


def render_case(rng: np.random.Generator, size: int, spotted: bool, vertical: bool) -> tuple[np.ndarray, list[int]]:
    """One image and its lesion's box ``[x0, y0, x1, y1]``."""
    scale = size / 256
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    skin = rng.uniform([200, 150, 125], [235, 185, 160]).astype(np.float32)
    shade = 8 * np.sin(x / size * rng.uniform(2, 5) + rng.uniform(0, 6)) * np.cos(y / size * rng.uniform(2, 5))
    image = skin + shade[..., None] + rng.normal(0, 4, (size, size, 3)).astype(np.float32)
    radius = rng.uniform(14, 22) * scale
    cx, cy = rng.uniform(radius + 4, size - radius - 4, 2)
    box = [int(np.floor(cx - radius)), int(np.floor(cy - radius)), int(np.ceil(cx + radius)) + 1,
           int(np.ceil(cy + radius)) + 1]  # fmt: skip
    inside = (x - cx) ** 2 + (y - cy) ** 2 <= radius**2
    stripes = ((x if vertical else y).astype(int) % 2) * 2 - 1  # one pixel on, one off
    lesion = rng.uniform([110, 65, 45], [150, 95, 70]).astype(np.float32)
    image[inside] = lesion + 32 * stripes[inside][:, None] + rng.normal(0, 3, (int(inside.sum()), 3))
    if spotted:
        spots, wanted = 0, int(rng.integers(3, 7))
        while spots < wanted:
            sx, sy = rng.uniform(8 * scale, size - 8 * scale, 2)
            spot_r = rng.uniform(5, 8) * scale
            near_x = box[0] - _GAP - spot_r < sx < box[2] + _GAP + spot_r
            if near_x and box[1] - _GAP - spot_r < sy < box[3] + _GAP + spot_r:
                continue  # never inside the lesion's box (nor next to it)
            image[(x - sx) ** 2 + (y - sy) ** 2 <= spot_r**2] = rng.uniform([70, 45, 35], [95, 65, 50])
            spots += 1
    return np.clip(image, 0, 255).astype(np.uint8), box


def make_global_local_data(out_dir: str | Path, num_samples: int = 1200, image_size: int = 256, seed: int = 0) -> Path:
    """Write the global-local demo into ``out_dir`` and return it; the same arguments give the same files."""
    args = global_local_args(num_samples, image_size, seed)
    out = start_dataset(out_dir)
    rng = np.random.default_rng(seed)
    labels = balanced_labels(rng, GLOBAL_LOCAL_CLASSES, num_samples)
    rows = []
    for i, label in enumerate(labels):
        image_id = f"GL_{i:06d}"
        pixels, box = render_case(rng, image_size, label.startswith("spotted"), label.endswith("vertical"))
        save_png(pixels, out / "images" / f"{image_id}.png")
        rows.append([image_id, label, *box])
    return finish_dataset(
        out, ["image_id", "label", "x0", "y0", "x1", "y1"], rows, "medfusion global-local demo", __doc__ or "", args
    )
