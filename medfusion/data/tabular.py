"""Clinical variables of a samples CSV as model inputs: standardised numbers with missing flags, category indices.

The statistics (means, standard deviations, category maps) are fitted on the training rows only, so nothing of the
validation or test rows leaks into the inputs, and travel in a checkpoint as plain Python (:meth:`state_dict`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from medfusion.data.errors import ConfigError, DataError, raise_for_rows
from medfusion.runs.ranks import rank_zero_warn

UNKNOWN = 0  # categorical index of a category not seen in the training rows
MISSING = 1  # categorical index of an empty cell: a missing value is not an unknown one
FIRST_CATEGORY = 2  # index of the first (sorted) category seen in the training rows

_NUMBER = r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?"  # a plain decimal number: no "nan", "inf", "1_000" or "1,5"


@dataclass
class TabularSpec:
    """Which CSV columns are numeric (standardised) and which categorical (one embedding per category)."""

    numeric: list[str]
    categorical: list[str]

    def __post_init__(self) -> None:
        both = [c for c in self.numeric if c in self.categorical]
        if both:
            raise ConfigError(
                f"Tabular column(s) {both} are both numeric and categorical. Fix: list each column in one of them."
            )
        for kind, columns in (("numeric", self.numeric), ("categorical", self.categorical)):
            repeated = [c for c, n in Counter(columns).items() if n > 1]
            if repeated:
                raise ConfigError(f"Tabular {kind} column(s) {repeated} are listed twice. Fix: list each once.")
        if not self.numeric and not self.categorical:
            raise ConfigError("The tabular spec has no column. Fix: name at least one numeric or categorical column.")

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


@dataclass
class TabularFeatures:
    """The tabular inputs of N rows: ``numeric`` float32 [N, Fn] (standardised, 0.0 where missing),
    ``numeric_missing`` bool [N, Fn] (True where missing), ``categorical`` int64 [N, Fc] (see :data:`UNKNOWN`,
    :data:`MISSING`)."""

    numeric: np.ndarray
    numeric_missing: np.ndarray
    categorical: np.ndarray

    def __len__(self) -> int:
        return self.numeric.shape[0]

    def row(self, index: int) -> dict[str, np.ndarray]:
        """Row ``index`` as a sample's tabular entry (the collate function stacks them into the batch's)."""
        return {
            "numeric": self.numeric[index],
            "numeric_missing": self.numeric_missing[index],
            "categorical": self.categorical[index],
        }

    def to_tensors(self) -> dict[str, torch.Tensor]:
        """The tabular entry of a batch: ``{numeric, numeric_missing, categorical}`` as tensors."""
        return {
            "numeric": torch.from_numpy(self.numeric),
            "numeric_missing": torch.from_numpy(self.numeric_missing),
            "categorical": torch.from_numpy(self.categorical),
        }


class TabularPreprocessor:
    """Standardises numeric columns and indexes categorical ones with statistics of the training rows.

    Numeric: ``(x - mean) / std`` with the mean and population standard deviation (ddof 0) of the observed training
    values; a std of 0 (a constant column, or a single observed value) is taken as 1, so the column is centred, not
    divided by zero. A missing value becomes 0.0 with ``numeric_missing`` True, so the model can learn from
    missingness itself. Categorical: index :data:`UNKNOWN` (0) for a category not seen in the training rows,
    :data:`MISSING` (1) for an empty cell, then the training categories in sorted order from 2; categories are the
    stripped cell texts, numbers written without a trailing ``.0`` (read categorical columns as text to keep
    ``"01"`` and ``"1"`` apart). Build with :meth:`fit` or :meth:`from_state`.
    """

    def __init__(
        self, spec: TabularSpec, mean: Sequence[float], std: Sequence[float], categories: dict[str, list[str]]
    ) -> None:
        if len(mean) != len(spec.numeric) or len(std) != len(spec.numeric):
            raise ValueError(f"Need one mean and std per numeric column {spec.numeric}, got {len(mean)}, {len(std)}")
        if list(categories) != spec.categorical:
            raise ValueError(f"Need the categories of the columns {spec.categorical}, got {list(categories)}")
        self.spec = spec
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.categories = {column: list(values) for column, values in categories.items()}
        self._index = {
            column: {value: FIRST_CATEGORY + i for i, value in enumerate(values)}
            for column, values in self.categories.items()
        }

    @classmethod
    def fit(
        cls, spec: TabularSpec, table: pd.DataFrame, csv_path: str | Path, rows: Sequence[int] | None = None
    ) -> TabularPreprocessor:
        """Fit on the training ``rows`` (0-based data rows of ``csv_path``; all rows when None) of ``table``."""
        part, positions = _select(table, spec, csv_path, rows)
        values, missing = _numeric_values(part, positions, spec.numeric, csv_path)
        empty = [c for c, miss in zip(spec.numeric, missing.T, strict=True) if miss.all()]
        categories = {c: sorted({v for v in _category_names(part[c]) if v is not None}) for c in spec.categorical}
        empty += [c for c in spec.categorical if not categories[c]]
        if empty:
            raise DataError(
                f"Tabular column(s) {empty} of {csv_path} have no value in the {len(part)} training row(s), so "
                "nothing can be learned from them. Fix: fill them in, or remove them from the tabular columns."
            )
        std = np.nanstd(values, axis=0)  # of the observed values (NaN where missing), ddof 0
        return cls(spec, np.nanmean(values, axis=0).tolist(), np.where(std > 0, std, 1.0).tolist(), categories)

    def transform(
        self, table: pd.DataFrame, csv_path: str | Path, rows: Sequence[int] | None = None
    ) -> TabularFeatures:
        """The features of ``rows`` (0-based data rows of ``csv_path``; all rows when None) of ``table``.

        Categories not seen in the training rows get index :data:`UNKNOWN`, counted per column in one warning.
        """
        part, positions = _select(table, self.spec, csv_path, rows)
        values, missing = _numeric_values(part, positions, self.spec.numeric, csv_path)
        numeric = (values - np.asarray(self.mean)) / np.asarray(self.std)
        numeric = np.where(missing, 0.0, numeric).astype(np.float32)
        categorical = np.empty((len(part), len(self.spec.categorical)), dtype=np.int64)
        unseen: list[str] = []
        for j, column in enumerate(self.spec.categorical):
            index = self._index[column]
            names = _category_names(part[column])
            categorical[:, j] = [MISSING if v is None else index.get(v, UNKNOWN) for v in names]
            new = Counter(v for v in names if v is not None and v not in index)
            if new:
                shown = ", ".join(repr(v) for v, _ in new.most_common(5)) + (", ..." if len(new) > 5 else "")
                unseen.append(f"column {column!r}: {sum(new.values())} row(s) with {shown}")
        if unseen:
            rank_zero_warn(
                f"Tabular categories of {csv_path} not seen in the training rows get the unknown index "
                f"{UNKNOWN}: " + "; ".join(unseen)
            )
        return TabularFeatures(numeric, missing, categorical)

    @property
    def num_numeric(self) -> int:
        return len(self.spec.numeric)

    @property
    def cardinalities(self) -> list[int]:
        """Indices per categorical column, unknown and missing included (the categorical embedding sizes)."""
        return [FIRST_CATEGORY + len(self.categories[c]) for c in self.spec.categorical]

    def state_dict(self) -> dict[str, Any]:
        """The fitted statistics as plain lists, floats, strings and dicts (loadable with ``weights_only=True``)."""
        return {
            "numeric": list(self.spec.numeric),
            "categorical": list(self.spec.categorical),
            "mean": list(self.mean),
            "std": list(self.std),
            "categories": {c: list(v) for c, v in self.categories.items()},
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TabularPreprocessor:
        """The preprocessor :meth:`state_dict` described."""
        spec = TabularSpec(list(state["numeric"]), list(state["categorical"]))
        return cls(spec, state["mean"], state["std"], state["categories"])


def _select(
    table: pd.DataFrame, spec: TabularSpec, csv_path: str | Path, rows: Sequence[int] | None
) -> tuple[pd.DataFrame, list[int]]:
    """The spec's columns of ``rows`` of ``table`` and those rows' positions, with a :class:`DataError` for
    absent columns."""
    absent = [c for c in spec.columns if c not in table.columns]
    if absent:
        raise DataError(
            f"{csv_path} has no tabular column(s) {absent}; its columns are {list(table.columns)}. "
            "Fix: rename them in the CSV or in the tabular numeric/categorical columns."
        )
    positions = list(range(len(table))) if rows is None else [int(r) for r in rows]
    return table[spec.columns].iloc[positions], positions


def _numeric_values(
    part: pd.DataFrame, positions: list[int], columns: list[str], csv_path: str | Path
) -> tuple[np.ndarray, np.ndarray]:
    """float64 values [N, Fn] (NaN where missing) and the missing mask; a :class:`DataError` naming each row
    (``positions``: the 0-based data rows of ``part``) that holds text or an infinite number in a numeric column."""
    values = np.full((len(part), len(columns)), np.nan)
    bad: dict[int, list[str]] = {}
    for j, column in enumerate(columns):
        series = part[column]
        if pd.api.types.is_numeric_dtype(series) and not pd.api.types.is_bool_dtype(series):
            values[:, j] = series.to_numpy(dtype=np.float64, na_value=np.nan)
            cells = values[:, j].tolist()
            wrong = np.isinf(values[:, j])
        else:  # text (the column was read as text, or pandas found non-numbers in it)
            cells = series.astype(object).where(series.notna(), "").astype(str).to_numpy()
            text = pd.Series(cells, dtype=object).str.strip()
            number = text.str.fullmatch(_NUMBER).to_numpy(dtype=bool)
            values[number, j] = text[number].astype(float).to_numpy()
            wrong = (~number & (text != "").to_numpy()) | np.isinf(values[:, j])
        for i in np.flatnonzero(wrong):
            bad.setdefault(positions[i], []).append(f"column {column!r} has {cells[i]!r}")
    if bad:
        raise_for_rows(
            "Values that are not finite numbers in numeric tabular columns",
            csv_path,
            sorted(bad),
            ["; ".join(bad[r]) for r in sorted(bad)],
            "clean the column to plain numbers (45, not '45y'; '.' as the decimal point), declare it a categorical "
            "column, or add the string to data.na_values to read it as missing.",
        )
    return values, np.isnan(values)


def _category_names(series: pd.Series) -> list[str | None]:
    """The category of each cell: its stripped text (None when empty), integral numbers without ``.0``."""
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    names = [_category_name(v) for v in uniques]
    return [None if c < 0 else names[c] for c in codes]


def _category_name(value: object) -> str | None:
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    return text or None
