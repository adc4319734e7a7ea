"""Where a sample's text comes from: a JSON ``{id: text}`` file, a CSV column, or a template."""

from __future__ import annotations

import json
import math
import string
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medfusion.data.errors import DataError, not_utf8, raise_for_rows


def read_text_json(path: str | Path) -> dict[str, str]:
    """Read ``{id: text}``; a clear :class:`DataError` for non-UTF-8, malformed or wrongly shaped files."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))  # -sig: accept a byte-order mark
    except FileNotFoundError:
        raise DataError(
            f"Text file {path} does not exist. Fix: set data.text_json to your {{id: text}} file."
        ) from None
    except UnicodeDecodeError:
        raise not_utf8(path, "Text file") from None
    except json.JSONDecodeError as err:
        raise DataError(
            f"Malformed JSON in {path} at line {err.lineno}, column {err.colno}: {err.msg}. "
            "Fix: the file must be one JSON object {id: text}."
        ) from None
    if not isinstance(data, dict):
        raise DataError(
            f"{path} holds a JSON {type(data).__name__}, expected an object {{id: text}}. "
            'Fix: write it as {"<id>": "<text>", ...}.'
        )
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise DataError(f"{path}: values must be strings; not so for ids {bad[:10]}. Fix: map each id to its text.")
    return {str(k): v for k, v in data.items()}


def _format_value(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "unknown"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def render_template(template: str, table: pd.DataFrame, csv_path: str | Path) -> list[str]:
    """Fill ``template`` (``"{age}-year-old {sex}, {localization}"``) per row; missing values read ``unknown``."""
    fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
    absent = [f for f in fields if f not in table.columns]
    if absent:
        raise DataError(
            f"text_template names columns {absent} that {csv_path} does not have "
            f"(columns: {list(table.columns)}). Fix: use {{column}} names from the CSV."
        )
    records = table[fields].to_dict("records")
    return [template.format(**{k: _format_value(v) for k, v in rec.items()}) for rec in records]


def collect_texts(
    ids: Sequence[str],
    table: pd.DataFrame,
    csv_path: str | Path,
    *,
    text_json: dict[str, str] | None,
    json_path: str | Path | None,
    text_column: str | None,
    text_template: str | None,
    allow_missing: bool = False,
) -> list[str | None]:
    """One text per row from exactly one configured source, or a :class:`DataError`.

    A row without a text (no JSON entry, an empty text or text cell) is an error unless ``allow_missing``,
    when its text is None. A template always gives a text (its missing fields read ``unknown``).
    """
    chosen = [s for s in (json_path, text_column, text_template) if s is not None]
    if len(chosen) != 1:
        raise DataError(
            "Text is used but "
            + ("no text source is set" if not chosen else "several text sources are set")
            + ". Fix: set exactly one of data.text_json, data.text_column, data.text_template "
            "(or drop 'text' from data.modalities)."
        )
    allow = " (or set data.allow_missing: [text] to keep samples without a text)"
    texts: list[str | None]
    if text_json is not None:
        if not allow_missing:
            missing = [r for r, i in enumerate(ids) if i not in text_json]
            raise_for_rows(
                f"Ids with no text in {json_path}",
                csv_path,
                missing,
                [f"id {ids[r]!r}" for r in missing],
                f"add these ids to {json_path}{allow}.",
            )
        texts = [text_json.get(i) for i in ids]
    elif text_column is not None:
        if text_column not in table.columns:
            raise DataError(
                f"{csv_path} has no text column {text_column!r} (columns: {list(table.columns)}). "
                "Fix: set data.text_column to one of them."
            )
        texts = [None if pd.isna(v) else str(v) for v in table[text_column]]
    else:
        texts = render_template(text_template, table, csv_path)  # type: ignore[arg-type]
    texts = [t if t is not None and t.strip() else None for t in texts]
    if not allow_missing:
        empty = [r for r, t in enumerate(texts) if t is None]
        raise_for_rows(
            "Empty texts",
            csv_path,
            empty,
            [f"id {ids[r]!r}" for r in empty],
            f"give every sample a non-empty text{allow}.",
        )
    return texts
