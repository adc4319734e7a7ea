"""One error type for bad input data, with messages that name the file, the rows and the fix."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path


class DataError(ValueError):
    """Bad input data: the message names the file, the offending rows and how to fix them."""


class ConfigError(ValueError):
    """An option with a value it cannot take: the message names the option, the value and what it accepts."""


def check_option(name: str, value: object, valid: bool, accepts: str) -> None:
    """Raise a :class:`ConfigError` for option ``name`` (e.g. ``data.batch_size``) unless ``valid``."""
    if not valid:
        raise ConfigError(f"{name}={value!r} is invalid: it must be {accepts}. Fix: set --{name} to such a value.")


def csv_line(row_index: int) -> int:
    """The 1-based line number in the CSV file of a 0-based data row (line 1 is the header)."""
    return row_index + 2


# The field separator each CSV was read with (data.csv_sep), so that line numbers follow the same fields.
_SEPARATORS: dict[str, str] = {}


def register_separator(file: str | Path, sep: str) -> None:
    """Record that ``file`` is read with field separator ``sep`` (for the line numbers of later messages)."""
    _SEPARATORS[str(Path(file).resolve())] = sep


def _row_start_lines(file: str | Path) -> list[int] | None:
    """The line on which each data row of a CSV starts, skipping blank lines as pandas does.

    Data row ``r`` is on line ``r + 2`` only when no blank line or quoted multi-line field
    (a report) comes before it; None when the file cannot be scanned.
    """
    try:
        with open(file, newline="", encoding="utf-8-sig", errors="replace") as f:
            reader = csv.reader(f, delimiter=_SEPARATORS.get(str(Path(file).resolve()), ","))
            starts: list[int] = []
            end = 0
            for row in reader:
                start, end = end + 1, reader.line_num
                if row and (len(row) > 1 or row[0].strip()):
                    starts.append(start)
    except (OSError, csv.Error):
        return None
    return starts[1:]  # the first non-blank record is the header


def row_lines(file: str | Path, rows: Sequence[int]) -> list[int]:
    """The lines of ``file`` on which 0-based data rows ``rows`` start (blank lines and multi-line fields counted)."""
    starts = _row_start_lines(file)
    if starts is None or (rows and max(rows) >= len(starts)):
        return [csv_line(r) for r in rows]
    return [starts[r] for r in rows]


def row_line(file: str | Path, row: int) -> int:
    """The line of ``file`` on which 0-based data row ``row`` starts (blank lines and multi-line fields counted)."""
    return row_lines(file, [row])[0]


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
    shown = row_lines(file, rows[:limit])
    lines = [f"  line {n}: {d}" for n, d in zip(shown, details[:limit], strict=True)]
    more = f"\n  ... and {len(rows) - limit} more" if len(rows) > limit else ""
    raise DataError(f"{problem} in {file} ({len(rows)} row(s)):\n" + "\n".join(lines) + more + f"\nFix: {fix}")
