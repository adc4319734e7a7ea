"""The demo's classes and cue design: which pattern each class shows in each modality, and which cues a case lacks.

Each class is a triple (image pattern a, text pattern b, tabular pattern c) over three values per coordinate, laid
out as the six pairs a != b of Z3 with c = a + b (mod 3): every value of every coordinate occurs in exactly two
classes, and any two coordinates determine the class. Per case, one modality (uniformly chosen) shows no cue with
probability ``P_ONE_UNINFORMATIVE``; :func:`optimal_accuracy` gives what a perfect reader of any cue subset reaches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Mapping

import numpy as np

DEMO_CLASSES: tuple[str, ...] = ("akiec", "bcc", "bkl", "df", "mel", "nv")

# HAM10000 lesion-image counts (vasc dropped), rescaled to proportions over DEMO_CLASSES.
_HAM10000_COUNTS = {"akiec": 327, "bcc": 514, "bkl": 1099, "df": 115, "mel": 1113, "nv": 6705}
LONG_TAIL_PROPORTIONS: dict[str, float] = {
    name: count / sum(_HAM10000_COUNTS.values()) for name, count in _HAM10000_COUNTS.items()
}

MODALITIES: tuple[str, ...] = ("image", "text", "tabular")
VIEWS: tuple[str, ...] = ("dermoscopic", "clinical")  # the image views of ``views=2``
IMAGE_PATTERNS: tuple[str, ...] = ("irregular_multicolour", "round_uniform_brown", "pearly_pink_vessels")
TEXT_PATTERNS: tuple[str, ...] = ("changing", "waxy_elderly", "scaly_sun")
TABULAR_PATTERNS: tuple[str, ...] = ("ldh_low", "ldh_mid", "ldh_high")  # ranges of the lab value, see tabular.py

# As Z3 values: image irregular=0, round=1, pearly=2; text waxy=0, scaly=1, changing=2; tabular low=0, mid=1, high=2.
# Image and text patterns form the 6-cycle mel -(image)- df -(text)- akiec -(image)- bcc -(text)- bkl -(image)- nv
# -(text)- mel; the tabular pattern is their sum mod 3.
CLASS_PATTERNS: dict[str, tuple[str, str, str]] = {
    "mel": ("irregular_multicolour", "changing", "ldh_high"),
    "nv": ("round_uniform_brown", "changing", "ldh_low"),
    "bkl": ("round_uniform_brown", "waxy_elderly", "ldh_mid"),
    "bcc": ("pearly_pink_vessels", "waxy_elderly", "ldh_high"),
    "akiec": ("pearly_pink_vessels", "scaly_sun", "ldh_low"),
    "df": ("irregular_multicolour", "scaly_sun", "ldh_mid"),
}

P_ONE_UNINFORMATIVE = 0.75
# Per case: all three modalities informative, or exactly the image / the text / the tabular cue missing.
MODES: tuple[str | None, ...] = (None, *MODALITIES)
MODE_PROBS: tuple[float, ...] = (1 - P_ONE_UNINFORMATIVE, *(P_ONE_UNINFORMATIVE / 3,) * 3)
# With two views, an informative image cue shows in both views, only the dermoscopic or only the clinical one.
VIEW_CUES: tuple[tuple[str, ...], ...] = (VIEWS, VIEWS[:1], VIEWS[1:])
VIEW_CUE_PROBS: tuple[float, ...] = (1 / 3, 1 / 3, 1 / 3)

Cue = dict[str, str | None]  # source ("image", "text", "tabular", and with two views each view) -> pattern or None


def case_cue(label: str, mode: int, view_cue: int | None = None) -> Cue:
    """The pattern each source of one case shows (None: uninformative) for a mode index and, with two views, a
    view-cue index; the one place the generator and :func:`optimal_accuracy` turn the design into observations."""
    blank = MODES[mode]
    cue: Cue = {m: (None if m == blank else p) for m, p in zip(MODALITIES, CLASS_PATTERNS[label], strict=True)}
    if view_cue is not None:
        shown = VIEW_CUES[view_cue]
        cue |= {v: (cue["image"] if v in shown else None) for v in VIEWS}
    return cue


def assign_cues(rng: np.random.Generator, labels: list[str], views: int) -> list[Cue]:
    """Per case, its :func:`case_cue`; modes (and view cues among image-informative cases) are stratified per class,
    so each class gets them in proportions as close to ``MODE_PROBS`` (``VIEW_CUE_PROBS``) as its count allows."""
    y = np.array(labels)
    modes = np.zeros(len(labels), dtype=int)
    view_cues = np.zeros(len(labels), dtype=int)
    for label in DEMO_CLASSES:
        idx = np.flatnonzero(y == label)
        modes[idx] = _stratified(rng, idx.size, MODE_PROBS)
        if views == 2:
            seen = idx[modes[idx] != MODES.index("image")]
            view_cues[seen] = _stratified(rng, seen.size, VIEW_CUE_PROBS)
    return [
        case_cue(label, int(m), int(v) if views == 2 else None)
        for label, m, v in zip(labels, modes, view_cues, strict=True)
    ]


def optimal_accuracy(sources: Collection[str], views: int = 1, proportions: Mapping[str, float] | None = None) -> float:
    """Bayes-optimal accuracy of a classifier reading the true pattern (or its absence) of each of ``sources``
    (``image``, ``text``, ``tabular``, and with ``views=2`` also ``dermoscopic``/``clinical``), classes drawn with
    ``proportions`` (default balanced)."""
    priors = proportions or dict.fromkeys(DEMO_CLASSES, 1 / len(DEMO_CLASSES))
    view_cues = list(enumerate(VIEW_CUE_PROBS)) if views == 2 else [(None, 1.0)]
    joint: dict[tuple[str | None, ...], dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for label in DEMO_CLASSES:
        for mode, p_mode in enumerate(MODE_PROBS):
            for view_cue, p_view in view_cues:
                cue = case_cue(label, mode, view_cue)
                joint[tuple(cue[s] for s in sources)][label] += priors[label] * p_mode * p_view
    return sum(max(by_label.values()) for by_label in joint.values())


def _stratified(rng: np.random.Generator, n: int, probs: tuple[float, ...]) -> np.ndarray:
    """``n`` category indices in random order, each category's count within one of ``n * p``."""
    exact = n * np.asarray(probs)
    counts = np.floor(exact + 1e-9).astype(int)
    rest = n - int(counts.sum())
    if rest > 0:  # the leftover few go to categories drawn by their fractional parts
        frac = np.clip(exact - counts, 0, None)
        counts[rng.choice(len(probs), rest, replace=False, p=frac / frac.sum())] += 1
    return rng.permutation(np.repeat(np.arange(len(probs)), counts))
