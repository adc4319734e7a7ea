"""Reading a samples CSV into validated records: ids, labels, image files, texts, splits, groups."""

from __future__ import annotations

import csv
import re
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from medfusion.data.errors import DataError, not_utf8, raise_for_rows
from medfusion.data.images import ImageIndex
from medfusion.data.texts import collect_texts


@dataclass
class Records:
    """Validated samples of one CSV, row-aligned. ``labels`` are class names (None where unlabelled); an
    ``image_paths``/``texts`` entry is None where that sample has no image/text (``allow_missing``);
    ``rows`` are the 0-based data rows of the CSV (for error messages)."""

    csv_path: Path
    ids: list[str]
    labels: list[str | None]
    image_paths: list[Path | None] | None
    texts: list[str | None] | None
    splits: list[str] | None
    groups: list[str] | None
    rows: list[int]

    def subset(self, rows: Sequence[int]) -> Records:
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[r] for r in rows]

        return Records(
            self.csv_path,
            pick(self.ids),
            pick(self.labels),
            pick(self.image_paths),
            pick(self.texts),
            pick(self.splits),
            pick(self.groups),
            pick(self.rows),
        )


def read_csv(csv_path: str | Path, required: Sequence[str], as_text: Sequence[str]) -> pd.DataFrame:
    """Read a CSV, with a :class:`DataError` for a missing, empty or malformed file or absent columns."""
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist. Fix: set data.csv_path to your samples table.")
    fix = "Fix: check quoting, separators and encoding (UTF-8)."
    try:
        with warnings.catch_warnings():
            # Rows with more fields than the header: by default pandas silently takes the first column
            # as the index and shifts every other one; with index_col=False it drops the extra fields
            # with a ParserWarning, which we make an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(path, dtype={c: str for c in as_text}, index_col=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file {path} is empty. Fix: it needs a header row and one row per sample.") from None
    except pd.errors.ParserWarning:
        line = _first_overlong_line(path)
        where = f"line {line} has" if line else "some rows have"
        raise DataError(f"Malformed CSV {path}: {where} more fields than the header (line 1). {fix}") from None
    except UnicodeDecodeError:
        raise not_utf8(path, "CSV file") from None
    except pd.errors.ParserError as err:
        # pandas counts "rows" from 0 (header = row 0); report 1-based lines like every other message.
        message = re.sub(r"starting at row (\d+)", lambda m: f"starting on line {int(m[1]) + 1}", str(err).strip())
        raise DataError(f"Malformed CSV {path}: {message}. {fix}") from None
    absent = [c for c in required if c not in table.columns]
    if absent:
        raise DataError(
            f"{path} has no column(s) {absent}; its columns are {list(table.columns)}. "
            "Fix: rename them in the CSV or set data.id_column / data.label_column / ... to match."
        )
    if table.empty:
        raise DataError(f"CSV file {path} has a header but no rows. Fix: add one row per sample.")
    return table


def _first_overlong_line(path: Path) -> int | None:
    """The first line with non-empty fields beyond the header's (for the error message)."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f)
        width = len(next(reader, []))
        for row in reader:
            if any(field.strip() for field in row[width:]):
                return reader.line_num
    return None


def _column_values(table: pd.DataFrame, column: str, csv_path: Path, what: str, fix: str = "") -> list[str]:
    values = _optional_values(table, column)
    blank = [r for r, v in enumerate(values) if v is None]
    details = [f"column {column!r}"] * len(blank)
    raise_for_rows(f"Empty {what} values", csv_path, blank, details, f"fill in {column}{fix}.")
    return values  # type: ignore[return-value]


def _optional_values(table: pd.DataFrame, column: str) -> list[str | None]:
    """Stripped values of ``column``; None for an empty cell."""
    return [None if pd.isna(v) or not str(v).strip() else str(v).strip() for v in table[column]]


def read_records(
    csv_path: str | Path,
    *,
    id_column: str,
    label_column: str,
    labels_required: bool = True,
    image_index: ImageIndex | None,
    image_column: str | None = None,
    text_json: dict[str, str] | None = None,
    json_path: str | Path | None = None,
    text_column: str | None = None,
    text_template: str | None = None,
    split_column: str | None = None,
    group_column: str | None = None,
    allow_missing: Collection[str] = (),
) -> Records:
    """Read and validate one CSV. ``image_index=None`` skips images; no text source skips texts.

    With ``labels_required=False`` (prediction CSVs) a missing label column gives unlabelled records.
    ``allow_missing`` (``"image"``, ``"text"``) lets an empty ``image_column`` cell or a missing text mark a
    sample without that modality (None in the records); a sample without both is still an error.
    """
    csv_path = Path(csv_path).expanduser()
    as_text = [c for c in (id_column, label_column, image_column, split_column, group_column) if c]
    required = [c for c in as_text if c != label_column or labels_required]
    table = read_csv(csv_path, required, as_text)
    if label_column not in table.columns:
        label_column = None
    ids = _column_values(table, id_column, csv_path, "id")
    duplicated = pd.Series(ids).duplicated(keep=False)  # after stripping: " a" and "a" are the same id
    dup_rows = [int(r) for r in duplicated.to_numpy().nonzero()[0]]
    raise_for_rows(
        "Duplicated ids", csv_path, dup_rows, [f"id {ids[r]!r}" for r in dup_rows], "give every sample a unique id."
    )
    labels = _column_values(table, label_column, csv_path, "label") if label_column else [None] * len(ids)
    image_paths = None
    if image_index is not None:
        keys: list[str | None] = list(ids)
        if image_column and "image" in allow_missing:
            keys = _optional_values(table, image_column)
        elif image_column:
            fix = " (or set data.allow_missing: [image] to keep samples without an image)"
            keys = list(_column_values(table, image_column, csv_path, "image path", fix))
        image_paths = image_index.resolve_all(keys, csv_path)
    texts = None
    if any(s is not None for s in (json_path, text_column, text_template)):
        texts = collect_texts(
            ids,
            table,
            csv_path,
            text_json=text_json,
            json_path=json_path,
            text_column=text_column,
            text_template=text_template,
            allow_missing="text" in allow_missing,
        )
    if image_paths is not None and texts is not None:
        empty = [r for r, (p, t) in enumerate(zip(image_paths, texts, strict=True)) if p is None and t is None]
        raise_for_rows(
            "Samples with neither an image nor a text",
            csv_path,
            empty,
            [f"id {ids[r]!r}" for r in empty],
            "give each sample at least one of them, or remove these rows.",
        )
    splits = _column_values(table, split_column, csv_path, "split") if split_column else None
    groups = _column_values(table, group_column, csv_path, "group") if group_column else None
    return Records(csv_path, ids, labels, image_paths, texts, splits, groups, list(range(len(ids))))


def infer_class_names(labels: Sequence[str]) -> list[str]:
    """Sorted unique labels; numerically sorted when every label is an integer ("2" before "10")."""
    unique = set(labels)
    if all(label.lstrip("-").isdigit() for label in unique):
        return sorted(unique, key=lambda label: (int(label), label))  # "02" and "2": a fixed order
    return sorted(unique)


def label_indices(records: Records, class_names: Sequence[str]) -> list[int]:
    """Class index per row; a :class:`DataError` naming every row whose label is not a known class."""
    index = {name: i for i, name in enumerate(class_names)}
    unknown = [r for r, label in enumerate(records.labels) if label not in index]
    raise_for_rows(
        "Labels not in the classes",
        records.csv_path,
        unknown,
        [f"id {records.ids[r]!r}: label {records.labels[r]!r}" for r in unknown],
        f"the classes are {list(class_names)}: fix the labels or data.class_names.",
    )
    return [index[label] for label in records.labels]  # type: ignore[index]
