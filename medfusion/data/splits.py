"""Train/val/test assignment: from a split column, or stratified by ratios keeping groups whole."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from medfusion.data.errors import DataError, raise_for_rows

SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validate": "val",  # MIMIC-CXR's mimic-cxr-2.0.0-split.csv
    "dev": "val",
    "test": "test",
    "testing": "test",
}


def splits_from_column(values: Sequence[object], csv_path: str | Path) -> list[str]:
    """Normalise a split column: ``train``/``val``/``test`` and the synonyms in :data:`SPLIT_ALIASES`
    (``validate``, ``valid``, ``validation``, ``dev``, ...), in any case, surrounding spaces ignored."""
    splits = [SPLIT_ALIASES.get(str(v).strip().lower(), "") for v in values]
    bad = [r for r, s in enumerate(splits) if not s]
    raise_for_rows(
        "Unknown split values",
        csv_path,
        bad,
        [repr(values[r]) for r in bad],
        f"use train, val or test (any case; also {', '.join(sorted(set(SPLIT_ALIASES) - set(SPLITS)))}).",
    )
    return splits


def check_groups_disjoint(splits: Sequence[str], groups: Sequence[str], csv_path: str | Path) -> None:
    """Raise when a group (patient, lesion) appears in more than one split: that leaks labels."""
    seen: dict[str, set[str]] = defaultdict(set)
    for split, group in zip(splits, groups, strict=True):
        seen[group].add(split)
    leaking = [r for r, g in enumerate(groups) if len(seen[g]) > 1]
    raise_for_rows(
        "Groups split across train/val/test",
        csv_path,
        leaking,
        [f"group {groups[r]!r} is in {sorted(seen[groups[r]])}" for r in leaking],
        "keep every group (patient/lesion) in one split, or unset data.group_column.",
    )


def stratified_group_split(
    labels: Sequence[str], groups: Sequence[str], val_ratio: float, test_ratio: float, seed: int
) -> list[str]:
    """Assign whole groups to splits, stratified by each group's majority label.

    Within each class the groups are shuffled with ``seed`` and the first ``test_ratio`` of them
    go to test, the next ``val_ratio`` to val; a class with at least three groups gets one of
    each wherever its ratio is non-zero, so rare classes are evaluated too.
    """
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError(f"val_ratio + test_ratio must be in [0, 1), got {val_ratio} + {test_ratio}")
    majority: dict[str, tuple[str, int]] = {}  # group -> its most frequent label and count (ties: the smaller label)
    for (group, label), count in Counter(zip(groups, labels, strict=True)).items():
        best = majority.get(group)
        if best is None or (-count, label) < (-best[1], best[0]):
            majority[group] = (label, count)
    groups_of_class: dict[str, list[str]] = defaultdict(list)
    for group in sorted(majority):
        groups_of_class[majority[group][0]].append(group)
    rng = np.random.default_rng(seed)
    split_of_group: dict[str, str] = {}
    for label in sorted(groups_of_class):
        members = groups_of_class[label]
        order = [members[i] for i in rng.permutation(len(members))]
        n_test, n_val = (_count(len(order), ratio) for ratio in (test_ratio, val_ratio))
        for i, group in enumerate(order):
            split_of_group[group] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return [split_of_group[g] for g in groups]


def training_subset(
    splits: Sequence[str], labels: Sequence[str], groups: Sequence[str], fraction: float, seed: int
) -> list[str]:
    """``splits`` with the training rows outside a ``fraction`` of them marked ``"unused"``, for learning curves.

    Stratified by class and drawn by group: within each class (a group's majority label) the training groups are
    put in one order drawn with ``seed``, and taken in that order until they hold ``round(fraction * rows)`` of the
    class's training rows (at least one group). One order serves every fraction, so a larger fraction contains
    the smaller ones. Validation and test rows are never touched.
    """
    if fraction >= 1:
        return list(splits)
    train = [r for r, split in enumerate(splits) if split == "train"]
    majority: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        majority[groups[r]][labels[r]] += 1
    rows_of: dict[str, list[int]] = defaultdict(list)
    for r in train:
        rows_of[groups[r]].append(r)
    classes: dict[str, list[str]] = defaultdict(list)
    for group in sorted(majority):
        label = min(majority[group].items(), key=lambda item: (-item[1], item[0]))[0]
        classes[label].append(group)
    rng = np.random.default_rng([seed, 1])  # a stream of its own: the split itself stays as without a fraction
    kept: set[int] = set()
    for label in sorted(classes):
        members = classes[label]
        wanted = max(1, round(fraction * sum(len(rows_of[g]) for g in members)))
        taken = 0
        for i in rng.permutation(len(members)):
            if taken >= wanted:
                break
            kept.update(rows_of[members[i]])
            taken += len(rows_of[members[i]])
    return [split if split != "train" or r in kept else "unused" for r, split in enumerate(splits)]


def _count(n: int, ratio: float) -> int:
    count = round(n * ratio)
    return max(count, 1) if ratio > 0 and n >= 3 else count


def check_splits_present(splits: Sequence[str], needed: Sequence[str], csv_path: str | Path) -> None:
    present = set(splits)
    absent = [s for s in needed if s not in present]
    if absent:
        raise DataError(
            f"{csv_path} gives no rows to the {absent} split(s). Fix: add them to the split column, "
            "or lower/raise data.val_ratio and data.test_ratio."
        )


def rare_class_warnings(
    labels: dict[str, Sequence[int]], class_names: Sequence[str], csv_path: str | Path, needed: int
) -> list[str]:
    """Warnings about classes without a row in a non-empty val or test split (their per-class metrics are undefined
    there), and about classes with fewer than ``needed`` rows in all (0: no such check), naming each class with its
    rows per split. ``labels`` are the class indices per split."""
    shown = [s for s in SPLITS if s == "train" or labels.get(s)]
    counts = {s: Counter(labels[s]) for s in shown}

    def named(classes: list[int]) -> str:
        return ", ".join(f"{class_names[i]!r} ({', '.join(f'{s} {counts[s][i]}' for s in shown)})" for i in classes)

    warnings = []
    evaluated = [s for s in shown if s != "train"]
    absent = [i for i in range(len(class_names)) if any(counts[s][i] == 0 for s in evaluated)]
    if absent:
        warnings.append(
            f"Classes with no row in the {' or '.join(evaluated)} split of {csv_path} (rows per split): "
            f"{named(absent)}; their per-class metrics are undefined there. Fix: add rows of these classes."
        )
    rare = [i for i in range(len(class_names)) if sum(counts[s][i] for s in shown) < needed]
    if rare:
        warnings.append(
            f"Classes with fewer than {needed} rows in {csv_path} cannot have a row in each of the {needed} random "
            f"splits: {named(rare)}. Fix: add rows of these classes, or merge or drop them."
        )
    return warnings


def assign_splits(
    splits: Sequence[str] | None,
    labels: Sequence[str],
    groups: Sequence[str],
    csv_path: str | Path,
    val_ratio: float,
    test_ratio: float,
    seed: int,
    group_column_given: bool,
) -> list[str]:
    """Each row's split: from the split column's values (``splits``; groups must not span two), else a stratified
    random split by ``groups``; a :class:`DataError` when a needed split gets no row."""
    if splits is not None:
        assigned = splits_from_column(splits, csv_path)
        if group_column_given:
            check_groups_disjoint(assigned, groups, csv_path)
        check_splits_present(assigned, ["train", "val"], csv_path)
        return assigned
    assigned = stratified_group_split(labels, groups, val_ratio, test_ratio, seed)
    needed = ["train"] + [s for s, r in (("val", val_ratio), ("test", test_ratio)) if r > 0]
    check_splits_present(assigned, needed, csv_path)
    return assigned
