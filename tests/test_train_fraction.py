"""``data.train_fraction``: a stratified, group-wise, nested subset of the training rows for learning curves, with
validation and test untouched and out-of-range values refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from data_helpers import build, sample_rows, write_layout

from medfusion.data import ConfigError
from medfusion.data.splits import training_subset

pytestmark = pytest.mark.usefixtures("one_thread")


def toy(n_groups: int = 60) -> tuple[list[str], list[str], list[str]]:
    """Splits, labels (two classes, 2:1) and groups of 1-3 rows each."""
    splits, labels, groups = [], [], []
    for g in range(n_groups):
        for _ in range(1 + g % 3):
            splits.append("val" if g % 10 == 0 else "test" if g % 10 == 1 else "train")
            labels.append("a" if g % 3 else "b")
            groups.append(f"g{g}")
    return splits, labels, groups


def kept(splits: list[str]) -> set[int]:
    return {r for r, s in enumerate(splits) if s == "train"}


def test_a_fraction_is_nested_stratified_by_class_and_keeps_groups_whole() -> None:
    splits, labels, groups = toy()
    train = kept(splits)
    subsets = {f: training_subset(splits, labels, groups, f, seed=0) for f in (0.25, 0.5, 1.0)}
    assert kept(subsets[0.25]) < kept(subsets[0.5]) < kept(subsets[1.0]) == train  # nested
    for f in (0.25, 0.5):
        chosen = kept(subsets[f])
        for label in ("a", "b"):
            rows = [r for r in train if labels[r] == label]
            share = sum(r in chosen for r in rows) / len(rows)
            assert abs(share - f) <= 3 / len(rows), (f, label, share)  # within one group of the target
        assert all((r in chosen) == (s in chosen) for r in train for s in train if groups[r] == groups[s])
        untouched = [(r, x) for r, x in enumerate(splits) if x in ("val", "test")]
        assert all(subsets[f][r] == x for r, x in untouched)
        assert set(subsets[f]) == {"train", "val", "test", "unused"}


def test_the_subset_follows_the_seed() -> None:
    splits, labels, groups = toy()
    assert training_subset(splits, labels, groups, 0.3, 1) == training_subset(splits, labels, groups, 0.3, 1)
    assert training_subset(splits, labels, groups, 0.3, 1) != training_subset(splits, labels, groups, 0.3, 2)


def test_every_class_keeps_a_training_group_however_small_the_fraction() -> None:
    splits, labels, groups = toy()
    subset = training_subset(splits, labels, groups, 0.01, seed=0)
    assert {labels[r] for r in kept(subset)} == {"a", "b"}


def test_the_datamodule_trains_on_the_fraction_and_evaluates_on_the_same_sets(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(80))
    full = build(layout)
    full.setup("fit")
    with pytest.warns(UserWarning, match=r"train_fraction=0\.5: \d+ of \d+ training rows"):
        half = build(layout, train_fraction=0.5)
    half.setup("fit")
    assert set(half.datasets["train"].ids) < set(full.datasets["train"].ids)
    assert half.datasets["val"].ids == full.datasets["val"].ids
    assert sum(half.class_counts) == len(half.datasets["train"]) == round(sum(full.class_counts) / 2)
    assert all(count > 0 for count in half.class_counts)  # every class keeps training rows


@pytest.mark.parametrize("value", [0, -0.5, 1.5])
def test_a_fraction_out_of_range_is_refused_naming_the_option(tmp_path: Path, value: float) -> None:
    with pytest.raises(ConfigError, match=r"data\.train_fraction.*\(0, 1\]"):
        build(write_layout(tmp_path), train_fraction=value)
