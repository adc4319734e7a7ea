"""Permutation importance of the tabular features: it finds the one feature that carries the label, is seeded,
shuffles whole columns (a numeric value with its missing flag), leaves the model as it was; `medfusion explain`
writes its chart."""

from __future__ import annotations

import csv
from collections import Counter
from functools import partial
from pathlib import Path

import pytest
import torch
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from medfusion.cli import main
from medfusion.encoders import TabularEncoder
from medfusion.heads import MLPHead
from medfusion.interpret import (
    PermutationImportance,
    permutation_figure,
    permutation_importance,
    save_permutation_importance,
)
from medfusion.models import ImageClassifier, TabularClassifier

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

FEATURES = ["signal", "noise", "site"]  # numeric, numeric, categorical
SPECS = {"tabular": {"kind": "tabular", "num_numeric": 2, "cardinalities": [5], "features": FEATURES}}
CONFIGS = Path(__file__).parents[1] / "configs"


def toy_batches(n: int, generator: torch.Generator, batch_size: int = 64, absent: bool = False) -> list[dict]:
    """Only ``signal`` carries the label (its sign); ``noise`` is noise, missing in a fifth of the rows; ``site`` a
    random category; with ``absent``, the last sample of each batch has no tabular inputs."""
    signal = torch.randn(n, generator=generator)
    noise = torch.randn(n, generator=generator)
    missing = torch.rand(n, generator=generator) < 0.2
    numeric = torch.stack([signal, noise.masked_fill(missing, 0.0)], dim=1)
    numeric_missing = torch.stack([torch.zeros(n, dtype=torch.bool), missing], dim=1)
    categorical = torch.randint(2, 5, (n, 1), generator=generator)
    labels = (signal > 0).long()
    batches = []
    for start in range(0, n, batch_size):
        rows = slice(start, start + batch_size)
        size = len(labels[rows])
        batches.append(
            {
                "id": [f"s{i}" for i in range(start, start + size)],
                "label": labels[rows],
                "present": {"tabular": (torch.arange(size) != size - 1) | (not absent)},
                "tabular": {
                    "numeric": numeric[rows],
                    "numeric_missing": numeric_missing[rows],
                    "categorical": categorical[rows],
                },
            }
        )
    return batches


def tabular_model() -> TabularClassifier:
    return TabularClassifier(
        num_classes=2,
        modalities=SPECS,
        tabular_encoder=partial(TabularEncoder, dim=8, hidden=16, num_layers=1, dropout=0.0),
        head=partial(MLPHead, hidden_dims=(16,)),
    )


@pytest.fixture(scope="module")
def trained() -> TabularClassifier:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = tabular_model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    (batch,) = toy_batches(512, generator, batch_size=512)
    model.train()
    for _ in range(150):
        loss = model.criterion(model(batch), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model


def test_the_feature_that_carries_the_label_matters_most(trained: TabularClassifier) -> None:
    batches = toy_batches(320, torch.Generator().manual_seed(1))
    result = permutation_importance(trained, batches, metric="acc", repeats=4)
    assert result.features == FEATURES and result.drops.shape == (3, 4) and result.metric == "acc"
    assert result.baseline > 0.95
    importance = result.as_dict()
    assert next(iter(importance)) == "signal" and importance["signal"][0] > 0.3  # about half the samples flip
    assert abs(importance["noise"][0]) < 0.03 and abs(importance["site"][0]) < 0.03
    assert all(std >= 0 for _, std in importance.values()) and importance["signal"][1] > 0
    # the default metric is macro F1; a callable on (probs, labels) works too
    assert permutation_importance(trained, batches, repeats=1).metric == "macro_f1"

    def error_rate(probs: torch.Tensor, labels: torch.Tensor) -> float:
        return float((probs.argmax(1) != labels).float().mean())

    errors = permutation_importance(trained, batches, metric=error_rate, repeats=4)
    assert errors.metric == "error_rate" and errors.baseline == pytest.approx(1 - result.baseline)
    torch.testing.assert_close(errors.drops, -result.drops)  # same seed, same shuffles


def test_permutation_is_seeded_and_leaves_the_model_as_it_was(trained: TabularClassifier) -> None:
    batches = toy_batches(128, torch.Generator().manual_seed(2))
    trained.train()
    trained.encoders["tabular"].eval()  # a mixed state, restored as it was
    modes = {name: module.training for name, module in trained.named_modules()}
    weights = {name: value.clone() for name, value in trained.state_dict().items()}
    first = permutation_importance(trained, batches, metric="acc", repeats=3, seed=7)
    assert modes == {name: module.training for name, module in trained.named_modules()}
    assert all(torch.equal(weights[name], value) for name, value in trained.state_dict().items())
    again = permutation_importance(trained, batches, metric="acc", repeats=3, seed=7)
    assert torch.equal(first.drops, again.drops) and first.baseline == again.baseline
    other = permutation_importance(trained, batches, metric="acc", repeats=3, seed=8)
    assert not torch.equal(first.drops, other.drops)


class Recording(TabularClassifier):
    """Records the tabular inputs of every evaluation batch (and predicts nothing: class 0)."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[dict[str, torch.Tensor]] = []

    def predict_logits(self, batch: dict) -> torch.Tensor:
        assert not self.training and not torch.is_grad_enabled()
        self.seen.append({key: value.clone() for key, value in batch["tabular"].items()})
        return torch.zeros(len(batch["label"]), self.num_classes)


def test_a_permutation_shuffles_one_column_across_the_set_value_and_missing_flag_together() -> None:
    torch.manual_seed(0)
    model = Recording(
        num_classes=2, modalities=SPECS, tabular_encoder=partial(TabularEncoder, dim=4, hidden=4, num_layers=1)
    )
    batches = toy_batches(96, torch.Generator().manual_seed(3), batch_size=32, absent=True)
    permutation_importance(model, batches, repeats=2)
    passes = [
        {key: torch.cat([seen[key] for seen in model.seen[i : i + 3]]) for key in model.seen[0]}
        for i in range(0, len(model.seen), 3)
    ]
    assert len(passes) == 1 + 3 * 2  # the unpermuted set, then each feature twice, each pass over all 3 batches
    original = passes[0]
    present = torch.cat([batch["present"]["tabular"] for batch in batches])
    for pass_index, permuted in enumerate(passes[1:]):
        feature = pass_index // 2
        kind, column = ("numeric", feature) if feature < 2 else ("categorical", feature - 2)
        keys = ["numeric", "numeric_missing"] if kind == "numeric" else ["categorical"]
        for key, values in permuted.items():  # every other column is untouched
            others = [c for c in range(values.shape[1]) if key not in keys or c != column]
            assert torch.equal(values[:, others], original[key][:, others])
        moved = permuted[keys[0]][:, column]
        assert not torch.equal(moved, original[keys[0]][:, column])  # shuffled ...
        assert torch.equal(moved[~present], original[keys[0]][~present, column])  # ... among the present rows
        assert torch.equal(moved.sort().values, original[keys[0]][:, column].sort().values)  # same multiset
        batch_rows = moved[:32]  # values came from other batches too: the whole set is shuffled
        assert not torch.equal(batch_rows.sort().values, original[keys[0]][:32, column].sort().values)
        if kind == "numeric":  # each value keeps its missing flag: the (value, flag) pairs are one multiset
            assert pairs(permuted, column) == pairs(original, column)
            if column == 1:  # the column with missing values: its flags moved too
                assert not torch.equal(permuted["numeric_missing"][:, 1], original["numeric_missing"][:, 1])


def pairs(tabular: dict[str, torch.Tensor], column: int) -> Counter:
    values, flags = tabular["numeric"][:, column].tolist(), tabular["numeric_missing"][:, column].tolist()
    return Counter(zip(values, flags, strict=True))


def test_permutation_figure_and_files(tmp_path: Path) -> None:
    drops = torch.tensor([[0.0, 0.02], [0.3, 0.4], [-0.01, 0.01]], dtype=torch.float64)
    result = PermutationImportance(features=FEATURES, drops=drops, baseline=0.9, metric="acc")
    assert result.as_dict() == {
        "noise": pytest.approx((0.35, 0.05)),
        "signal": pytest.approx((0.01, 0.01)),
        "site": pytest.approx((0.0, 0.01)),
    }
    figure = permutation_figure(result)
    assert isinstance(figure, Figure)
    (ax,) = figure.axes
    assert [label.get_text() for label in ax.get_yticklabels()] == ["noise", "signal", "site"]
    bars = next(c for c in ax.containers if isinstance(c, BarContainer))
    assert [round(bar.get_width(), 4) for bar in bars] == [0.35, 0.01, 0.0] and bars.errorbar is not None
    png, table = save_permutation_importance(result, tmp_path / "out")
    assert png.name == "permutation_importance.png" and png.stat().st_size > 1000
    rows = list(csv.reader(table.open()))
    assert rows == [
        ["feature", "acc_drop_mean", "acc_drop_std"],
        ["noise", "0.3500", "0.0500"],
        ["signal", "0.0100", "0.0100"],
        ["site", "0.0000", "0.0100"],
    ]


def test_permutation_errors(trained: TabularClassifier) -> None:
    batches = toy_batches(16, torch.Generator().manual_seed(4))
    with pytest.raises(ValueError, match="2 feature names"):
        permutation_importance(trained, batches, feature_names=["a", "b"])
    with pytest.raises(ValueError, match="metric"):
        permutation_importance(trained, batches, metric="auc")
    with pytest.raises(ValueError, match="repeats"):
        permutation_importance(trained, batches, repeats=0)
    with pytest.raises(ValueError, match="no tabular modality"):
        permutation_importance(ImageClassifier(num_classes=2), batches)


@pytest.mark.slow
def test_explain_writes_the_permutation_chart_of_a_tabular_model(tmp_path: Path, capsys) -> None:
    args = [
        "--config",
        str(CONFIGS / "demo_tabular_only.yaml"),
        f"--data.root={tmp_path / 'data'}",
        "--data.num_samples=120",
        "--data.demo_image_size=32",
        "--data.batch_size=16",
        "--data.num_workers=0",
        f"--trainer.logger.init_args.save_dir={tmp_path / 'runs'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    main(["fit", *args, "--trainer.max_epochs=1", "--test_after_fit=false"])
    best = next((tmp_path / "runs" / "demo" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "explained"
    capsys.readouterr()
    main(["explain", *args, f"--ckpt_path={best}", "--num_samples=2", f"--out_dir={out}", "--permutation_repeats=2"])
    names = sorted(p.name for p in out.iterdir())
    assert "permutation_importance.png" in names and "permutation_importance.csv" in names
    assert len([n for n in names if not n.startswith("permutation_importance")]) == 2
    rows = list(csv.DictReader((out / "permutation_importance.csv").open()))
    assert sorted(row["feature"] for row in rows) == ["age", "ldh_u_l", "sex", "site"]
    printed = capsys.readouterr().out
    assert f"-> {out / 'permutation_importance.png'}" in printed and "4 tabular features" in printed
