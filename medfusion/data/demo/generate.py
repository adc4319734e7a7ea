"""Writing the demo dataset: class counts, patients, per-case cues, then the CSV, the reports, the images."""

from __future__ import annotations

import csv
import inspect
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from medfusion.data.cache_dir import cache_root
from medfusion.data.demo.cues import DEMO_CLASSES, LONG_TAIL_PROPORTIONS, VIEWS, Cue, assign_cues
from medfusion.data.demo.images import grid, lesion_look, render_image, save_png
from medfusion.data.demo.readme import readme_text
from medfusion.data.demo.reports import demographics, make_report
from medfusion.data.demo.tabular import TABULAR_COLUMNS, tabular_cells

_FORMAT_VERSION = 2  # bump when the generator's output changes, so cached datasets are regenerated
_DEMO_FILES = frozenset({"metadata.csv", "reports.json", "images", "README.md", ".complete"})
MIN_CLASS_COUNT = 10
MIN_IMAGE_SIZE = 16  # the smallest side the generator draws
_MIN_CLASS_FRACTION = 0.01
_PATIENT_SIZES, _PATIENT_SIZE_PROBS = (1, 2, 3), (0.6, 0.25, 0.15)


def default_cache_dir() -> Path:
    """``demo`` under medfusion's cache directory (``$MEDFUSION_CACHE``, default ``~/.cache/medfusion``)."""
    return cache_root() / "demo"


def image_columns(views: int) -> list[str]:
    """The CSV columns naming each case's image files: none for ``views=1`` (``images/<image_id>.png``)."""
    return [f"{v}_image" for v in VIEWS] if views == 2 else []


def make_demo_data(
    out_dir: str | Path,
    num_samples: int = 2000,
    image_size: int = 64,
    seed: int = 0,
    long_tail: bool = False,
    views: int = 1,
) -> Path:
    """Write the synthetic dataset into ``out_dir`` and return it.

    Same arguments give byte-identical ``metadata.csv``/``reports.json`` and identical image pixels. Labels are balanced
    (equal counts, remainder to the first classes) or, with ``long_tail``, follow ``LONG_TAIL_PROPORTIONS`` with every
    class keeping at least 10 samples and 1%. ``views=2`` writes a dermoscopic and a clinical image per case. The
    ``.complete`` marker (generation args as JSON) is written last.
    """
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    args = _generation_args(num_samples, image_size, seed, long_tail, views)
    ids, labels, patients, cues = _plan(num_samples, seed, long_tail, views)
    out = Path(out_dir)
    images_dir = out / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)

    text_seq, image_seq, tabular_seq = np.random.SeedSequence(seed).spawn(5)[2:]
    text_rng, image_rng, tabular_rng = (np.random.default_rng(s) for s in (text_seq, image_seq, tabular_seq))
    info = {p: demographics(text_rng) | lesion_look(image_rng) for p in dict.fromkeys(patients)}
    reports = {i: make_report(text_rng, cue["text"], info[p]) for i, p, cue in zip(ids, patients, cues, strict=True)}
    rows = [
        [i, y, p, *tabular_cells(tabular_rng, cue["tabular"], info[p])]
        for i, y, p, cue in zip(ids, labels, patients, cues, strict=True)
    ]

    coords = grid(image_size)
    files = []
    for row, patient, cue in zip(rows, patients, cues, strict=True):
        if views == 1:
            files.append(f"{row[0]}.png")
            save_png(render_image(image_rng, coords, cue["image"], info[patient]), images_dir / files[-1])
            continue
        names = [f"{row[0]}_{v}.png" for v in VIEWS]
        for view, name in zip(VIEWS, names, strict=True):
            save_png(render_image(image_rng, coords, cue[view], info[patient], view), images_dir / name)
        row += names
        files += names
    for stale in set(images_dir.glob("DEMO_*.png")) - {images_dir / f for f in files}:
        stale.unlink()

    header = ["image_id", "label", "patient_id", *TABULAR_COLUMNS, *image_columns(views)]
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    (out / "reports.json").write_text(json.dumps(reports, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "README.md").write_text(readme_text(args, _class_counts(num_samples, long_tail), header), encoding="utf-8")
    (out / ".complete").write_text(json.dumps(args, sort_keys=True) + "\n", encoding="utf-8")
    return out


def demo_cues(num_samples: int = 2000, seed: int = 0, long_tail: bool = False, views: int = 1) -> dict[str, Cue]:
    """The ground truth behind ``make_demo_data`` with these args: per image_id, the pattern each cue source
    (``image``, ``text``, ``tabular``; with ``views=2`` also ``dermoscopic``, ``clinical``) shows, None where it
    shows none. For oracle baselines and tests; never written into the dataset."""
    ids, _, _, cues = _plan(num_samples, seed, long_tail, views)
    return dict(zip(ids, cues, strict=True))


def ensure_demo_data(out_dir: str | Path, **kwargs: Any) -> Path:
    """Return ``out_dir`` holding a complete dataset for ``make_demo_data(out_dir, **kwargs)``, generating if needed.

    Safe under concurrent callers (e.g. DDP ranks): each generates into a temporary sibling directory and renames it
    into place; a caller that finds a complete dataset with the same args already there uses it. A stale dataset (other
    args, or an interrupted run) is replaced; a non-empty directory that is not a demo dataset is never touched.
    """
    bound = inspect.signature(make_demo_data).bind(out_dir, **kwargs)
    bound.apply_defaults()
    gen_kwargs = {k: v for k, v in bound.arguments.items() if k != "out_dir"}
    return ensure_generated(out_dir, partial(make_demo_data, **gen_kwargs), _generation_args(**gen_kwargs))


def start_dataset(out_dir: str | Path) -> Path:
    """``out_dir`` with an ``images`` folder and no ``.complete`` marker, ready to be written."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / ".complete").unlink(missing_ok=True)
    return out


def balanced_labels(rng: np.random.Generator, classes: tuple[str, ...], count: int) -> list[str]:
    """``count`` labels, the classes equally often (remainder to the first), in random order."""
    labels = [classes[i % len(classes)] for i in range(count)]
    return [labels[i] for i in rng.permutation(count)]


def finish_dataset(out: Path, header: list[str], rows: list[list[Any]], title: str, doc: str, args: dict) -> Path:
    """Write ``metadata.csv`` (``header`` and ``rows``), a README (``title`` and the generator's ``doc``) and, last,
    the ``.complete`` marker holding ``args``; return ``out``."""
    with open(out / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    readme = doc.strip() + f"\n\nGenerated with {json.dumps(args, sort_keys=True)}.\n"
    (out / "README.md").write_text(f"# {title}\n\n" + readme, encoding="utf-8")
    (out / ".complete").write_text(json.dumps(args, sort_keys=True) + "\n", encoding="utf-8")
    return out


def ensure_generated(out_dir: str | Path, make: Callable[[Path], Any], args: dict[str, Any]) -> Path:
    """``out_dir`` holding the dataset ``make(dir)`` writes (its ``.complete`` recording ``args``), generated into
    a temporary sibling and renamed into place when it is not there yet (see :func:`ensure_demo_data`)."""
    out = Path(out_dir)
    if _is_complete(out, args):
        return out

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        make(tmp)
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


def _generation_args(num_samples: int, image_size: int, seed: int, long_tail: bool, views: int) -> dict[str, Any]:
    if views not in (1, 2):
        raise ValueError(f"views must be 1 or 2, got {views!r}")
    return {
        "format_version": _FORMAT_VERSION,
        "num_samples": int(num_samples),
        "image_size": int(image_size),
        "seed": int(seed),
        "long_tail": bool(long_tail),
        "views": int(views),
    }


def _plan(
    num_samples: int, seed: int, long_tail: bool, views: int
) -> tuple[list[str], list[str], list[str], list[Cue]]:
    """Ids, labels, patient ids and cues of every case, from the label and cue streams of ``seed``."""
    label_seq, cue_seq = np.random.SeedSequence(seed).spawn(2)
    labels, patients = _assign_patients(np.random.default_rng(label_seq), _class_counts(num_samples, long_tail))
    cues = assign_cues(np.random.default_rng(cue_seq), labels, views)
    return [f"DEMO_{i:06d}" for i in range(num_samples)], labels, patients, cues


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
