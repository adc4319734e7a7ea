"""The clinical-variable columns of ``metadata.csv``: demographics and site (no class information, a few cells
missing at random) and the lab value ``ldh_u_l`` carrying the tabular cue (missing where the case has none)."""

from __future__ import annotations

from typing import Any

import numpy as np

LAB_COLUMN = "ldh_u_l"  # serum lactate dehydrogenase, U/L
TABULAR_COLUMNS: tuple[str, ...] = ("age", "sex", "site", LAB_COLUMN)
NUMERIC_COLUMNS: tuple[str, ...] = ("age", LAB_COLUMN)
CATEGORICAL_COLUMNS: tuple[str, ...] = ("sex", "site")
# Closed ranges (one decimal) of the lab value per tabular pattern: gaps between them, so the value identifies it.
LAB_RANGES: dict[str, tuple[float, float]] = {
    "ldh_low": (120.0, 170.0),
    "ldh_mid": (190.0, 240.0),
    "ldh_high": (260.0, 310.0),
}
# Share of rows whose cell is empty, independently per row and column (a record that lacks it).
MISSING_RATES: dict[str, float] = {"age": 0.05, "sex": 0.03, "site": 0.05}


def tabular_cells(rng: np.random.Generator, tabular_pattern: str | None, info: dict[str, Any]) -> list[str]:
    """The ``TABULAR_COLUMNS`` cells of one row as CSV text ('' = missing): the patient's age/sex/site, and a lab
    value drawn uniformly (0.1 steps) from ``LAB_RANGES[tabular_pattern]``, empty when the pattern is ``None``."""
    gone = rng.random(len(MISSING_RATES)) < np.array(list(MISSING_RATES.values()))
    cells = ["" if miss else str(info[name]) for name, miss in zip(MISSING_RATES, gone, strict=True)]
    if tabular_pattern is None:
        return [*cells, ""]
    low, high = LAB_RANGES[tabular_pattern]
    tenths = int(rng.integers(round(low * 10), round(high * 10) + 1))
    return [*cells, f"{tenths // 10}.{tenths % 10}"]


def lab_pattern(cell: str) -> str | None:
    """The tabular pattern a lab-value cell shows (None for an empty cell); the inverse of :func:`tabular_cells`."""
    if not cell:
        return None
    value = float(cell)
    return next(p for p, (low, high) in LAB_RANGES.items() if low <= value <= high)
