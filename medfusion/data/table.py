"""Reading a samples CSV into validated records: ids, labels, image files, texts, tabular columns, splits, groups."""

from __future__ import annotations

import csv
import re
import warnings
from collections import Counter, defaultdict
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pandas as pd

from medfusion.data.crops import CropSpec, read_boxes
from medfusion.data.errors import DataError, not_utf8, raise_for_rows, register_separator, row_lines
from medfusion.data.images import ImageIndex
from medfusion.data.slices import SliceSpec, listed_stacks, neighbour_stacks
from medfusion.data.texts import collect_texts


@dataclass
class Records:
    """Validated samples of one CSV, row-aligned. ``labels`` are class names (None where unlabelled); ``images``
    holds one file list per image modality name, an entry None where that sample has no such image
    (``allow_missing``), and a ``texts`` entry is None where it has no text; ``rows`` are the 0-based data rows of
    the CSV (for error messages, and to index ``tabular``). ``tabular`` is the CSV's tabular columns, all rows
    (:meth:`subset` keeps the frame and narrows ``rows``), for the tabular preprocessor. ``crops`` holds per crop
    modality (``data.crops``) each sample's box (4 numbers) or mask file; its ``images`` are its source's.
    ``stacks`` holds per slice-stack modality (``data.slices``) each sample's files in order (None: no image); its
    ``images`` are the centre ones. ``passages`` holds per sample the ids of the knowledge passages appended to
    its text (``data.knowledge``; None without)."""

    csv_path: Path
    ids: list[str]
    labels: list[str | None]
    images: dict[str, list[Path | None]]
    texts: list[str | None] | None
    splits: list[str] | None
    groups: list[str] | None
    rows: list[int]
    tabular: pd.DataFrame | None = None
    crops: dict[str, list] = field(default_factory=dict)
    stacks: dict[str, list] = field(default_factory=dict)
    passages: list[list[str]] | None = None

    @classmethod
    def empty(cls, csv_path: str | Path | None) -> Records:
        """No samples (the splits of a configuration without a training CSV)."""
        return cls(Path(csv_path or "none"), [], [], {}, None, None, None, [])

    def subset(self, rows: Sequence[int]) -> Records:
        def pick(values: list | None) -> list | None:
            return None if values is None else [values[r] for r in rows]

        return Records(
            self.csv_path,
            pick(self.ids),
            pick(self.labels),
            {name: pick(paths) for name, paths in self.images.items()},
            pick(self.texts),
            pick(self.splits),
            pick(self.groups),
            pick(self.rows),
            self.tabular,
            {name: pick(values) for name, values in self.crops.items()},
            {name: pick(values) for name, values in self.stacks.items()},
            pick(self.passages),
        )

    def tabular_absent(self) -> list[bool]:
        """Per sample, whether every tabular cell is empty (with ``allow_missing: [tabular]``, no tabular input)."""
        if self.tabular is None:
            return [False] * len(self.ids)
        empty = self.tabular.isna().all(axis=1).to_numpy()
        return [bool(empty[r]) for r in self.rows]


_COMMON_SEPARATORS = (",", ";", "\t", "|")
_SEPARATOR_NAMES = {",": "comma-", ";": "semicolon-", "\t": "tab-", "|": "pipe-"}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def read_csv(
    csv_path: str | Path,
    required: Sequence[str],
    as_text: Sequence[str],
    sep: str = ",",
    na_values: Sequence[str] = (),
) -> pd.DataFrame:
    """Read a CSV, with a :class:`DataError` for a missing, empty or malformed file or absent columns.

    Fields are separated by ``sep``. Only empty cells (and cells equal to one of ``na_values``) are missing:
    ``NA``, ``None`` or ``null`` are text, so a label ``NA`` is a class and an id ``None`` an id.
    """
    path = Path(csv_path).expanduser()
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist. Fix: set data.csv_path to your samples table.")
    register_separator(path, sep)
    _check_separator(path, required, sep)
    fix = "Fix: check quoting, separators (data.csv_sep) and encoding (UTF-8)."
    try:
        with warnings.catch_warnings():
            # Rows with more fields than the header: by default pandas silently takes the first column
            # as the index and shifts every other one; with index_col=False it drops the extra fields
            # with a ParserWarning, which we make an error.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            table = pd.read_csv(
                path,
                sep=sep,
                dtype={c: str for c in as_text},
                index_col=False,
                keep_default_na=False,
                na_values=["", *na_values],
            )
    except pd.errors.EmptyDataError:
        raise DataError(f"CSV file {path} is empty. Fix: it needs a header row and one row per sample.") from None
    except pd.errors.ParserWarning:
        line = _first_overlong_line(path, sep)
        where = f"line {line} has" if line else "some rows have"
        raise DataError(f"Malformed CSV {path}: {where} more fields than the header (line 1). {fix}") from None
    except UnicodeDecodeError:
        raise not_utf8(path, "CSV file") from None
    except pd.errors.ParserError as err:
        raise DataError(_parser_error(path, sep, str(err).strip(), fix)) from None
    absent = [c for c in required if c not in table.columns]
    if absent:
        raise DataError(
            f"{path} has no column(s) {absent}; its columns are {list(table.columns)}. "
            "Fix: rename them in the CSV or set data.id_column / data.label_column / ... to match."
        )
    if table.empty:
        raise DataError(f"CSV file {path} has a header but no rows. Fix: add one row per sample.")
    return table


def _records(path: Path, sep: str) -> Iterator[tuple[int, list[str]]]:
    """Each record of ``path`` (a blank line is an empty one) with the line it starts on, as far as it parses."""
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        reader = csv.reader(f, delimiter=sep)
        end = 0
        try:
            for row in reader:
                yield end + 1, row
                end = reader.line_num
        except csv.Error:  # e.g. a field over the csv module's size limit: the records so far
            return


def _is_blank(row: list[str]) -> bool:
    return not any(field.strip() for field in row)


def _header(path: Path, sep: str) -> tuple[int, list[str]]:
    """The line and fields of the first non-blank record of ``path`` split by ``sep`` (no fields if none)."""
    return next(((line, row) for line, row in _records(path, sep) if not _is_blank(row)), (1, []))


def _check_separator(path: Path, required: Sequence[str], sep: str) -> None:
    """Raise when required columns are absent from the header split by ``sep`` but present when split by
    another common separator: the file is, say, ``;``-separated (a European spreadsheet's CSV export)."""
    _, header = _header(path, sep)
    absent = [c for c in required if c not in header]
    if not header or not absent:
        return
    for other in _COMMON_SEPARATORS:
        line, fields = _header(path, other) if other != sep else (1, [])
        if len(fields) > 1 and any(c in fields for c in absent):
            raise DataError(
                f"{path} has no column(s) {absent} when split by {sep!r}: its header (line {line}) looks "
                f"{other!r}-separated, with columns {fields}. Fix: set data.csv_sep: {other!r}, "
                f"or save the file {_SEPARATOR_NAMES.get(sep, repr(sep) + '-')}separated."
            )


def _first_overlong_line(path: Path, sep: str) -> int | None:
    """The line on which the first record with non-empty fields beyond the header's starts."""
    width = None
    for line, row in _records(path, sep):
        if width is None and not _is_blank(row):
            width = len(row)
        elif width is not None and any(field.strip() for field in row[width:]):
            return line
    return None


def _parser_error(path: Path, sep: str, message: str, fix: str) -> str:
    """pandas' tokenizer error as a message naming the line in the file: pandas counts a quoted multi-line field
    as one line and its "rows" from 0."""
    if "EOF inside string" in message and (line := _unclosed_quote_line(path, sep)) is not None:
        return (
            f'Malformed CSV {path}: the quoted field that starts on line {line} is never closed (a " without its '
            'closing ", so the rest of the file is read as one field). Fix: close the quote, or double each " '
            'inside a quoted field ("").'
        )
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    starts = [line for line, _ in _records(path, sep)]
    if fields and int(fields[2]) <= len(starts):
        expected, record, seen = (int(x) for x in fields.groups())
        line = starts[record - 1]
        overlong = _first_overlong_line(path, sep)
        if overlong is not None and overlong <= line:
            return f"Malformed CSV {path}: line {overlong} has more fields than the header (line 1). {fix}"
        return f"Malformed CSV {path}: line {line} has {seen} fields, where the rows before it have {expected}. {fix}"
    message = re.sub(r"starting at row (\d+)", lambda m: f"starting on line {int(m[1]) + 1}", message)
    return f"Malformed CSV {path}: {message}. {fix}"


def _unclosed_quote_line(path: Path, sep: str) -> int | None:
    """The 1-based line on which a quoted field that is never closed starts, None if every quote closes.

    Follows pandas' tokenizer: a quote opens a quoted field only as a field's first character, ``""`` inside
    one is an escaped quote, and a line ends at LF, CRLF or CR.
    """
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    line, opened, quoted, field_start, i = 1, 0, False, True, 0
    while i < len(text):
        char = text[i]
        if quoted and char == '"':
            if text.startswith('""', i):
                i += 1  # an escaped quote
            else:
                quoted = False
        elif char == '"' and field_start and not quoted:
            quoted, opened = True, line
        if char == "\n" or (char == "\r" and not text.startswith("\r\n", i)):
            line += 1
        field_start = not quoted and char in (sep, "\n", "\r")
        i += 1
    return opened if quoted else None


def _column_values(table: pd.DataFrame, column: str, csv_path: Path, what: str, fix: str = "") -> list[str]:
    values = _optional_values(table, column)
    blank = [r for r, v in enumerate(values) if v is None]
    details = [f"column {column!r}"] * len(blank)
    raise_for_rows(f"Empty {what} values", csv_path, blank, details, f"fill in {column}{fix}.")
    return values  # type: ignore[return-value]


def _optional_values(table: pd.DataFrame, column: str) -> list[str | None]:
    """Stripped values of ``column``; None for an empty cell."""
    return [_stripped(v) for v in table[column].tolist()]


def _stripped(value: object) -> str | None:
    if isinstance(value, str):  # the cells read as text: checked first, a million of them take a second
        return value.strip() or None
    return None if pd.isna(value) else str(value).strip() or None


def read_records(
    csv_path: str | Path,
    *,
    id_column: str,
    label_column: str,
    labels_required: bool = True,
    image_index: ImageIndex | None,
    image_columns: dict[str, str | None] | None = None,
    text_json: dict[str, str] | None = None,
    json_path: str | Path | None = None,
    text_column: str | None = None,
    text_template: str | None = None,
    tabular_columns: Sequence[str] = (),
    categorical_columns: Sequence[str] = (),
    split_column: str | None = None,
    group_column: str | None = None,
    allow_missing: Collection[str] = (),
    sep: str = ",",
    na_values: Sequence[str] = (),
    crops: dict[str, CropSpec] | None = None,
    slices: dict[str, SliceSpec] | None = None,
    study_column: str | None = None,
    study_max_images: int | None = None,
) -> Records:
    """Read and validate one CSV. ``image_columns`` maps each image modality name to its column of paths (None:
    the files are found by id); ``image_index=None`` skips images; no text source skips texts;
    ``tabular_columns`` (of which ``categorical_columns`` are read as text) are kept for the tabular
    preprocessor.

    With ``labels_required=False`` (prediction CSVs) a missing label column gives unlabelled records.
    ``allow_missing`` (modality names) lets an empty image-path cell, a missing text or (``"tabular"``) a row
    with every tabular cell empty mark a sample without that modality (None in the records); a sample without
    any modality is still an error. ``sep`` and ``na_values`` are as in :func:`read_csv`. ``crops`` (by modality
    name) adds images cut from their source modality's: its boxes or mask files (found like the images);
    ``slices`` reads image modalities as stacks of slices (:mod:`medfusion.data.slices`); ``study_column`` makes
    each study (its rows) one record (:mod:`medfusion.data.studies`).
    """
    csv_path = Path(csv_path).expanduser()
    image_columns, crops = dict(image_columns or {}), dict(crops or {}) if image_index is not None else {}
    path_columns = [c for c in image_columns.values() if c] + [s.mask_column for s in crops.values() if s.mask_column]
    as_text = [c for c in (id_column, label_column, *path_columns, split_column, group_column) if c]
    as_text += [c for c in categorical_columns if c not in as_text]
    required = [c for c in as_text if c != label_column or labels_required]
    required += [c for c in tabular_columns if c not in required]
    required += [c for spec in crops.values() for c in spec.columns if c not in required]
    slices = dict(slices or {}) if image_index is not None else {}
    listed = {name: spec.column for name, spec in slices.items() if spec.column}
    as_text += [c for c in [*listed.values(), study_column] if c and c not in as_text]
    required += [study_column] if study_column and study_column not in required else []
    required += [c for c in listed.values() if c not in required]
    table = read_csv(csv_path, required, as_text, sep=sep, na_values=na_values)
    if label_column not in table.columns:
        label_column = None
    ids = _column_values(table, id_column, csv_path, "id")
    duplicated = pd.Series(ids).duplicated(keep=False)  # after stripping: " a" and "a" are the same id
    dup_rows = [int(r) for r in duplicated.to_numpy().nonzero()[0]]
    raise_for_rows(
        "Duplicated ids", csv_path, dup_rows, [f"id {ids[r]!r}" for r in dup_rows], "give every sample a unique id."
    )
    labels = _column_values(table, label_column, csv_path, "label") if label_column else [None] * len(ids)
    images: dict[str, list[Path | None]] = {}
    if image_index is not None:
        for name, column in image_columns.items():
            if name in listed:
                continue  # read below, from its column of slice lists
            keys: list[str | None] = list(ids)
            if column and name in allow_missing:
                keys = _optional_values(table, column)
            elif column:
                fix = f" (or set data.allow_missing: [{name}] to keep samples without this image)"
                keys = list(_column_values(table, column, csv_path, "image path", fix))
            images[name] = image_index.resolve_all(keys, csv_path)
    stacks: dict[str, list] = {}
    for name, spec in slices.items():
        if spec.column is not None:
            if name not in allow_missing:
                _column_values(table, spec.column, csv_path, "slice list", f" (or set data.allow_missing: [{name}])")
            stacks[name] = listed_stacks(image_index, table, spec, csv_path)  # type: ignore[arg-type]
            images[name] = [None if s is None else s[len(s) // 2] for s in stacks[name]]
        else:
            stacks[name] = neighbour_stacks(image_index, images[name], spec.neighbours, csv_path)  # type: ignore[arg-type]
    crop_values: dict[str, list] = {}
    for name, spec in crops.items():
        images[name] = list(images[spec.source])
        if spec.box_columns is not None:
            crop_values[name] = read_boxes(table, spec, csv_path)
        else:
            masks = _column_values(table, spec.mask_column, csv_path, "mask path")
            crop_values[name] = image_index.resolve_all(masks, csv_path)  # type: ignore[union-attr]
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
    tabular = table[list(tabular_columns)] if tabular_columns else None
    rows = list(range(len(ids)))
    records = Records(csv_path, ids, labels, images, texts, None, None, rows, tabular, crop_values, stacks)
    _check_some_modality(records, allow_missing)
    records.splits = _column_values(table, split_column, csv_path, "split") if split_column else None
    records.groups = _column_values(table, group_column, csv_path, "group") if group_column else None
    if study_column:
        from medfusion.data.studies import group_studies  # studies builds on Records

        studies = _column_values(table, study_column, csv_path, "study id")
        records = group_studies(records, studies, study_max_images)
    return records


def _check_some_modality(records: Records, allow_missing: Collection[str]) -> None:
    """A :class:`DataError` naming every row that has none of its modalities."""
    absent = [[p is None for p in paths] for paths in records.images.values()]
    if records.texts is not None:
        absent.append([t is None for t in records.texts])
    if records.tabular is not None:
        absent.append(records.tabular_absent() if "tabular" in allow_missing else [False] * len(records.ids))
    empty = [r for r, row in enumerate(zip(*absent, strict=True)) if all(row)]
    raise_for_rows(
        "Samples with none of their modalities",
        records.csv_path,
        empty,
        [f"id {records.ids[r]!r}" for r in empty],
        "give each sample at least one of them, or remove these rows.",
    )


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


def label_key(label: str) -> tuple[str, object]:
    """What equivalent spellings of a label share: its number (``1``, ``1.0``, ``01``), else its case-folded text."""
    text = label.strip()
    if _NUMBER.fullmatch(text):
        try:
            return ("number", Decimal(text))  # exact: long integer ids do not collide as floats would
        except InvalidOperation:  # an exponent beyond Decimal's range
            pass
    return ("text", text.casefold())


def resolve_equivalent_labels(records: Records, class_names: Sequence[str], merge: bool) -> tuple[Records, str]:
    """Find labels that differ only in case, surrounding spaces or number format (``B``/``b``, ``1``/``1.0``/``01``).

    With ``class_names`` they are the labels that are no class name but equivalent to one; without, the groups of
    equivalent spellings, each to be merged into its most frequent spelling (ties: the first seen). Raises a
    :class:`DataError` listing each spelling with its count and first line, or with ``merge`` returns the records
    so merged and a description of the merge ("" when nothing was to merge).
    """
    counts = Counter(label for label in records.labels if label is not None)  # in order of first appearance
    first: dict[str, int] = {}
    for r, label in enumerate(records.labels):
        if label is not None:
            first.setdefault(label, r)
    groups: dict[tuple[str, object], list[str]] = defaultdict(list)
    for label in counts:
        groups[label_key(label)].append(label)
    classes: dict[tuple[str, object], str] = {}
    for name in class_names:
        classes.setdefault(label_key(name), name)
    merges: dict[str, list[str]] = {}  # the spelling merged into -> the spellings merged
    for key, spellings in groups.items():
        if class_names and key in classes:
            merged = [s for s in spellings if s not in class_names]
            if merged:
                merges[classes[key]] = merged
        elif not class_names and len(spellings) > 1:
            merges[max(spellings, key=counts.__getitem__)] = spellings  # max keeps the first of equal counts
    if not merges:
        return records, ""
    if merge:
        into = {s: target for target, spellings in merges.items() for s in spellings}
        labels = [None if label is None else into.get(label, label) for label in records.labels]
        described = "; ".join(
            ", ".join(f"{s!r} ({counts[s]} row(s))" for s in spellings if s != target) + f" into {target!r}"
            for target, spellings in merges.items()
        )
        return replace(records, labels=labels), f"merged labels of {records.csv_path}: {described}"
    shown = [records.rows[first[s]] for spellings in merges.values() for s in spellings]
    lines = iter(row_lines(records.csv_path, shown))
    listed = [
        ", ".join(f"{s!r} ({counts[s]} row(s), first on line {next(lines)})" for s in spellings)
        + (f": did you mean the class {target!r}?" if class_names else "")
        for target, spellings in merges.items()
    ]
    fix = (
        "spell them as the classes are spelled, or set data.merge_equivalent_labels: true to merge them into those"
        if class_names
        else "spell each class one way, or set data.merge_equivalent_labels: true to merge each group into its most "
        "frequent spelling"
    )
    raise DataError(
        f"Labels that differ only in case, surrounding spaces or number format in {records.csv_path} "
        f"({len(listed)} group(s)):\n" + "\n".join(f"  {line}" for line in listed) + f"\nFix: {fix}."
    )
