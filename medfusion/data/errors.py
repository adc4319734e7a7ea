"""One error type for bad input data, with messages that name the file, the rows and the fix."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Bad input data: the message names the file, the offending rows and how to fix them."""


def csv_line(row_index: int) -> int:
    """The 1-based line number in the CSV file of a 0-based data row (line 1 is the header)."""
    return row_index + 2


def raise_for_rows(
    problem: str, file: str | Path, rows: Sequence[int], details: Sequence[str], fix: str, limit: int = 10
) -> None:
    """Raise a :class:`DataError` listing up to ``limit`` offending rows of ``file`` (0-based data rows)."""
    if not rows:
        return
    lines = [f"  line {csv_line(r)}: {d}" for r, d in zip(rows[:limit], details[:limit], strict=True)]
    more = f"\n  ... and {len(rows) - limit} more" if len(rows) > limit else ""
    raise DataError(f"{problem} in {file} ({len(rows)} row(s)):\n" + "\n".join(lines) + more + f"\nFix: {fix}")
