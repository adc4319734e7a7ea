"""Tabular modality: preprocessing fitted on training rows only, and the feature-tokenizer encoder."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from medfusion.data.errors import ConfigError, DataError
from medfusion.data.table import read_csv
from medfusion.data.tabular import MISSING, UNKNOWN, TabularPreprocessor, TabularSpec
from medfusion.encoders import Encoded, encode_present
from medfusion.encoders.tabular import TabularEncoder

# tiny tensors: one intra-op thread is faster than two on a busy 2-core machine
pytestmark = pytest.mark.usefixtures("one_thread")

CSV = "samples.csv"


def table(**columns: list) -> pd.DataFrame:
    """A table as read_csv gives it: strings, NaN for empty cells."""
    return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def batch(numeric: list[list[float]], missing: list[list[bool]], categorical: list[list[int]]) -> dict:
    return {
        "numeric": torch.tensor(numeric, dtype=torch.float32).reshape(len(numeric), -1),
        "numeric_missing": torch.tensor(missing, dtype=torch.bool).reshape(len(missing), -1),
        "categorical": torch.tensor(categorical, dtype=torch.long).reshape(len(categorical), -1),
    }


# --- preprocessing -------------------------------------------------------------------------------------------


def test_fit_statistics_and_transform() -> None:
    data = table(
        age=["40", "50", np.nan, "60", "1000"],
        sex=["male", "female", "male", np.nan, "other"],
    )
    spec = TabularSpec(numeric=["age"], categorical=["sex"])
    prep = TabularPreprocessor.fit(spec, data, CSV, rows=[0, 1, 2, 3])
    assert prep.mean == [50.0] and prep.std == pytest.approx([np.std([40, 50, 60])])  # ddof 0, observed only
    assert prep.categories == {"sex": ["female", "male"]}  # sorted; missing is no category
    assert prep.cardinalities == [4] and prep.num_numeric == 1
    with pytest.warns(UserWarning, match=r"column 'sex': 1 row\(s\) with 'other'"):
        out = prep.transform(data, CSV)
    assert out.numeric.dtype == np.float32 and out.numeric_missing.dtype == bool and out.categorical.dtype == np.int64
    std = prep.std[0]
    np.testing.assert_allclose(out.numeric[:, 0], [-10 / std, 0.0, 0.0, 10 / std, 950 / std], rtol=1e-6)
    assert out.numeric_missing[:, 0].tolist() == [False, False, True, False, False]
    assert out.categorical[:, 0].tolist() == [3, 2, 3, MISSING, UNKNOWN]
    assert MISSING != UNKNOWN
    assert len(out) == 5


def test_statistics_come_from_the_training_rows_only() -> None:
    data = table(lab=["1", "2", "3", "4"], site=["a", "b", "a", "c"])
    spec = TabularSpec(["lab"], ["site"])
    train = [0, 1, 2]
    before = TabularPreprocessor.fit(spec, data, CSV, train).state_dict()
    changed = data.copy()
    changed.loc[3, "lab"] = "1e6"  # a test-split row
    changed.loc[3, "site"] = "z"
    after = TabularPreprocessor.fit(spec, changed, CSV, train).state_dict()
    assert after == before
    assert before["categories"] == {"site": ["a", "b"]}


@pytest.mark.parametrize("values", [["5", "5", "5"], ["7", np.nan, np.nan]], ids=["constant", "single-value"])
def test_zero_std_is_one(values: list) -> None:
    prep = TabularPreprocessor.fit(TabularSpec(["x"], []), table(x=values), CSV)
    assert prep.std == [1.0]
    out = prep.transform(table(x=["8"]), CSV)
    assert out.numeric[0, 0] == pytest.approx(8.0 - prep.mean[0])


def test_parsed_and_text_columns_agree() -> None:
    """pandas parses a clean numeric column to floats and a categorical number column to ints; both read as text."""
    parsed = pd.read_csv(io.StringIO("x,c\n1.5,1\n,2\n3,1\n"), keep_default_na=False, na_values=[""])
    as_text = pd.read_csv(io.StringIO("x,c\n 1.5 ,1\n,2.0\n3,1\n"), keep_default_na=False, na_values=[""], dtype=str)
    spec = TabularSpec(["x"], ["c"])
    first = TabularPreprocessor.fit(spec, parsed, CSV)
    second = TabularPreprocessor.fit(spec, as_text, CSV)
    assert first.categories == {"c": ["1", "2"]}
    assert second.categories == {"c": ["1", "2.0"]}  # text stays text: read categorical columns as text
    assert first.mean == second.mean and first.std == second.std
    np.testing.assert_array_equal(first.transform(parsed, CSV).numeric, second.transform(as_text, CSV).numeric)


def test_non_numeric_text_names_the_lines_and_the_fix() -> None:
    data = table(age=["45", "45y", "50", "unknown", "inf"], bmi=["20", "21", "n/a", "22", "23"])
    with pytest.raises(DataError) as info:
        TabularPreprocessor.fit(TabularSpec(["age", "bmi"], []), data, CSV)
    message = str(info.value)
    assert CSV in message and "(4 row(s))" in message
    assert "line 3: column 'age' has '45y'" in message
    assert "line 4: column 'bmi' has 'n/a'" in message
    assert "line 5: column 'age' has 'unknown'" in message and "line 6: column 'age' has 'inf'" in message
    assert "categorical" in message and "data.na_values" in message


def test_transform_checks_its_own_rows() -> None:
    data = table(age=["45", "50", "?"])
    prep = TabularPreprocessor.fit(TabularSpec(["age"], []), data, CSV, rows=[0, 1])
    with pytest.raises(DataError, match=r"line 4: column 'age' has '\?'"):
        prep.transform(data, CSV, rows=[2])


def test_absent_columns_list_the_csv_columns() -> None:
    with pytest.raises(DataError, match=r"no tabular column\(s\) \['bmi'\]; its columns are \['age', 'sex'\]"):
        TabularPreprocessor.fit(TabularSpec(["age", "bmi"], ["sex"]), table(age=["1"], sex=["m"]), CSV)


def test_column_without_training_values() -> None:
    data = table(lab=[np.nan, np.nan, "3"], site=["a", "b", "c"])
    with pytest.raises(DataError, match=r"\['lab'\] of samples.csv have no value in the 2 training row"):
        TabularPreprocessor.fit(TabularSpec(["lab"], ["site"]), data, CSV, rows=[0, 1])


def test_spec_errors() -> None:
    with pytest.raises(ConfigError, match=r"\['age'\] are both numeric and categorical"):
        TabularSpec(["age", "bmi"], ["age"])
    with pytest.raises(ConfigError, match="listed twice"):
        TabularSpec(["age", "age"], [])
    with pytest.raises(ConfigError, match="no column"):
        TabularSpec([], [])


def test_state_round_trip_through_a_weights_only_checkpoint(tmp_path: Path) -> None:
    data = table(age=["40", "50", np.nan], sex=["m", "f", np.nan], site=["a", "b", "a"])
    prep = TabularPreprocessor.fit(TabularSpec(["age"], ["sex", "site"]), data, CSV)
    torch.save({"tabular": prep.state_dict()}, tmp_path / "state.pt")
    restored = TabularPreprocessor.from_state(torch.load(tmp_path / "state.pt", weights_only=True)["tabular"])
    assert restored.state_dict() == prep.state_dict()
    for name, value in prep.transform(data, CSV).to_tensors().items():
        assert torch.equal(restored.transform(data, CSV).to_tensors()[name], value)


# --- encoder -------------------------------------------------------------------------------------------------


def test_encoder_shapes_and_fields() -> None:
    encoder = TabularEncoder(num_numeric=3, cardinalities=[4, 5], dim=8, hidden=16, num_layers=3)
    inputs = batch([[0.1, 0.2, 0.3]] * 2, [[False, True, False]] * 2, [[0, 3], [1, 4]])
    out = encoder(**inputs, tokens=True, levels=True)
    assert isinstance(out, Encoded)
    assert out.pooled.shape == (2, encoder.out_dim) == (2, 16)
    assert out.tokens.shape == (2, 5, encoder.token_dim) == (2, 5, 8)
    assert out.mask.shape == (2, 5) and out.mask.dtype == torch.bool and out.mask.all()
    assert encoder.level_dims == [16, 16, 16]
    assert [level.shape for level in out.levels] == [(2, d) for d in encoder.level_dims]
    plain = encoder(**inputs)
    assert plain.tokens is None and plain.mask is None and plain.levels is None
    encoder.load_pretrained()  # the hook exists and loads nothing


@pytest.mark.parametrize(("num_numeric", "cardinalities"), [(0, [3, 4]), (2, [])], ids=["no-numeric", "no-categorical"])
def test_encoder_with_one_kind_of_feature(num_numeric: int, cardinalities: list[int]) -> None:
    encoder = TabularEncoder(num_numeric, cardinalities, dim=4, hidden=8)
    inputs = {
        "numeric": torch.randn(3, num_numeric),
        "numeric_missing": torch.zeros(3, num_numeric, dtype=torch.bool),
        "categorical": torch.ones(3, len(cardinalities), dtype=torch.long),
    }
    out = encoder(**inputs, tokens=True)
    assert out.tokens.shape == (3, num_numeric + len(cardinalities), 4) and out.pooled.shape == (3, 8)
    out.pooled.sum().backward()


def test_encoder_input_errors() -> None:
    with pytest.raises(ValueError, match="at least one numeric or categorical feature"):
        TabularEncoder(0, [])
    encoder = TabularEncoder(2, [3])
    with pytest.raises(ValueError, match=r"numeric and numeric_missing must be \[B, 2\]"):
        encoder(**batch([[0.0]], [[False]], [[0]]))
    with pytest.raises(ValueError, match="out of range"):
        encoder(**batch([[0.0, 0.0]], [[False, False]], [[3]]))


def test_missing_embedding_gets_gradients_only_from_missing_values() -> None:
    encoder = TabularEncoder(3, [3], dim=4, hidden=8, dropout=0.0)
    encoder(**batch([[1.0, 2.0, 3.0]], [[False, False, False]], [[2]])).pooled.sum().backward()
    assert encoder.missing.grad is not None and not encoder.missing.grad.any()
    encoder.zero_grad()
    # a NaN where the value is missing changes nothing: it is never read
    encoder(**batch([[1.0, float("nan"), 3.0]], [[False, True, False]], [[2]])).pooled.sum().backward()
    grad = encoder.missing.grad
    assert grad[1].abs().sum() > 0 and not grad[[0, 2]].any()
    assert torch.isfinite(encoder.numeric_weight.grad).all()


def test_missing_is_not_the_value_zero() -> None:
    torch.manual_seed(0)  # a fixed initialisation, whatever ran before in this process
    encoder = TabularEncoder(1, [], dim=4, hidden=8).eval()
    zero = encoder(**batch([[0.0]], [[False]], [[]]), tokens=True)
    missing = encoder(**batch([[0.0]], [[True]], [[]]), tokens=True)
    assert not torch.allclose(zero.tokens, missing.tokens)
    assert not torch.allclose(zero.pooled, missing.pooled)


def test_unknown_category_is_a_neutral_token() -> None:
    encoder = TabularEncoder(0, [4, 3], dim=4, hidden=8).eval()
    out = encoder(**batch([[]], [[]], [[UNKNOWN, UNKNOWN]]), tokens=True)
    torch.testing.assert_close(out.tokens[0], encoder.categorical_bias)
    assert torch.isfinite(out.pooled).all()


def test_batch_permutation_equivariance_and_encode_present() -> None:
    torch.manual_seed(0)
    encoder = TabularEncoder(3, [4, 5], dim=8, hidden=16).eval()
    inputs = {
        "numeric": torch.randn(6, 3),
        "numeric_missing": torch.rand(6, 3) < 0.3,
        "categorical": torch.stack([torch.randint(0, 4, (6,)), torch.randint(0, 5, (6,))], dim=1),
    }
    out = encoder(**inputs, tokens=True, levels=True)
    perm = torch.randperm(6)
    permuted = encoder(**{k: v[perm] for k, v in inputs.items()}, tokens=True, levels=True)
    torch.testing.assert_close(permuted.pooled, out.pooled[perm])
    torch.testing.assert_close(permuted.tokens, out.tokens[perm])
    for level, original in zip(permuted.levels, out.levels, strict=True):
        torch.testing.assert_close(level, original[perm])
    # the batch's tabular dict runs through encode_present like the image and text inputs
    present = torch.tensor([True, False, True, True, False, True])
    partial = encode_present(encoder, inputs, present, tokens=True)
    torch.testing.assert_close(partial.pooled[present], out.pooled[present])
    assert not partial.mask[~present].any()


def synthetic(n: int, seed: int) -> pd.DataFrame:
    """A label that is 1 where ``lab`` is missing (30%), else ``lab > 0`` flipped for site ``b``."""
    rng = np.random.default_rng(seed)
    lab = rng.normal(size=n)
    site = rng.choice(["a", "b", "c"], size=n)
    missing = rng.random(n) < 0.3
    label = np.where(missing, 1, (lab > 0) ^ (site == "b")).astype(int)
    cells = [np.nan if m else f"{v:.4f}" for v, m in zip(lab, missing, strict=True)]
    return pd.DataFrame({"lab": pd.Series(cells, dtype=object), "site": site, "label": label})


def train(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, steps: int = 80) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()


def accuracy(model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return (model(inputs).argmax(1) == labels).float().mean().item()


class Classifier(nn.Module):
    def __init__(self, encoder: TabularEncoder) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.out_dim, 2)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.head(self.encoder(**inputs).pooled)


class NumericOnly(nn.Module):
    """The lab value alone, missing read as the mean (0 after standardising), no flag, no site."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(1, 32), nn.ReLU(), nn.Linear(32, 2))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.mlp(inputs["numeric"])


def test_learns_from_values_missingness_and_categories() -> None:
    torch.manual_seed(0)
    data = synthetic(1000, seed=0)
    train_rows, test_rows = list(range(600)), list(range(600, 1000))
    prep = TabularPreprocessor.fit(TabularSpec(["lab"], ["site"]), data, CSV, train_rows)
    x_train = prep.transform(data, CSV, train_rows).to_tensors()
    x_test = prep.transform(data, CSV, test_rows).to_tensors()
    y = torch.tensor(data["label"].to_numpy())
    y_train, y_test = y[:600], y[600:]
    model = Classifier(TabularEncoder(prep.num_numeric, prep.cardinalities, dim=8, hidden=32, dropout=0.0))
    train(model, x_train, y_train)
    baseline = NumericOnly()
    train(baseline, x_train, y_train)
    ours, theirs = accuracy(model, x_test, y_test), accuracy(baseline, x_test, y_test)
    assert ours > 0.9, ours
    assert theirs < 0.85 and theirs < ours - 0.1, (ours, theirs)


def test_end_to_end_from_a_csv(tmp_path: Path) -> None:
    csv_path = tmp_path / "samples.csv"
    pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(8)],
            "label": ["a", "b"] * 4,
            "age": [30, 45, None, 60, 70, None, 25, 55],
            "sex": ["male", "female", "female", None, "male", "female", "male", "other"],
            "site": ["01", "02", "01", "03", "02", "01", "04", "02"],
        }
    ).to_csv(csv_path, index=False)
    spec = TabularSpec(numeric=["age"], categorical=["sex", "site"])
    data = read_csv(csv_path, ["id", "label", *spec.columns], as_text=["id", "label", *spec.categorical])
    prep = TabularPreprocessor.fit(spec, data, csv_path, rows=range(6))
    assert prep.categories["site"] == ["01", "02", "03"]  # read as text: the leading zeros stay
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = prep.transform(data, csv_path)
    assert any("'other'" in str(w.message) and "'04'" in str(w.message) for w in caught)
    inputs = features.to_tensors()
    assert inputs["categorical"][6].tolist() == [3, UNKNOWN] and inputs["categorical"][3, 0] == MISSING
    encoder = TabularEncoder(prep.num_numeric, prep.cardinalities, dim=8, hidden=16, num_layers=2)
    out = encoder(**inputs, tokens=True, levels=True)
    assert out.pooled.shape == (8, 16) and out.tokens.shape == (8, 3, 8) and len(out.levels) == 2
    assert all(torch.isfinite(t).all() for t in (inputs["numeric"], out.pooled, out.tokens))
