"""One error type for bad input data, with messages that name the file, the rows and the fix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Bad input data: the message names the file, the offending rows and how to fix them."""


def csv_line(row_index: int) -> int:
    """The 1-based line number in the CSV file of a 0-based data row (line 1 is the header)."""
    return row_index + 2


def _row_start_lines(file: str | Path) -> list[int] | None:
    """The line on which each data row of a CSV starts, skipping blank lines as pandas does.

    Data row ``r`` is on line ``r + 2`` only when no blank line or quoted multi-line field
    (a report) comes before it; None when the file cannot be scanned.
    """
    try:
        with open(file, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f)
            starts: list[int] = []
            end = 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if row and (len(row) > 1 or row[0].strip()):
                    starts.append(start)
    except (OSError, csv.Error):
        return None
    return starts[1:]  # the first non-blank record is the header


def row_line(file: str | Path, row: int) -> int:
    """The line of ``file`` on which 0-based data row ``row`` starts (blank lines and multi-line fields counted)."""
    starts = _row_start_lines(file)
    return starts[row] if starts is not None and row < len(starts) else csv_line(row)


def not_utf8(file: str | Path, what: str) -> DataError:
    """The error for a file that is not UTF-8, naming the line of its first undecodable byte."""
    data = Path(file).read_bytes()
    try:
        data.decode("utf-8")
        where = ""
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        where = f" (line {line}: byte 0x{data[err.start]:02x})"
    return DataError(
        f"{what} {file} is not UTF-8{where}. Fix: re-save it as UTF-8 "
        "(a spreadsheet's 'CSV UTF-8' export, or encoding='utf-8' in code)."
    )


def raise_for_rows(
    problem: str, file: str | Path, rows: Sequence[int], details: Sequence[str], fix: str, limit: int = 10
) -> None:
    """Raise a :class:`DataError` listing up to ``limit`` offending rows of ``file`` (0-based data rows)."""
    if not rows:
        return
    starts = _row_start_lines(file)
    if starts is None or max(rows) >= len(starts):
        starts = [csv_line(r) for r in range(max(rows) + 1)]
    lines = [f"  line {starts[r]}: {d}" for r, d in zip(rows[:limit], details[:limit], strict=True)]
    more = f"\n  ... and {len(rows) - limit} more" if len(rows) > limit else ""
    raise DataError(f"{problem} in {file} ({len(rows)} row(s)):\n" + "\n".join(lines) + more + f"\nFix: {fix}")
