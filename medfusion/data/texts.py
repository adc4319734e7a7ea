"""Where a sample's text comes from: a JSON ``{id: text}`` file, a CSV column, or a template."""

from __future__ import annotations

import json
import math
import re
import string
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from medfusion.data.errors import DataError, not_utf8, raise_for_rows

_JSON_SPACE = re.compile(r"[ \t\n\r]*")


class _Pairs(list):
    """A JSON object as its ``(key, value)`` pairs in file order, so that repeated keys are seen, not merged."""


def _json_kind(value: object) -> str:
    """What a non-string JSON value is, in JSON's words."""
    if isinstance(value, _Pairs):
        return "an object"
    return {list: "an array", bool: "a boolean", int: "a number", float: "a number"}.get(type(value), "null")


def _key_lines(text: str) -> list[int]:
    """The line of each key of the top-level object in ``text`` (valid JSON), in file order."""
    decoder, space = json.JSONDecoder(), _JSON_SPACE
    lines: list[int] = []
    i = space.match(text, space.match(text).end() + 1).end()  # past "{"
    while text[i] == '"':
        lines.append(text.count("\n", 0, i) + 1)
        _, i = json.decoder.scanstring(text, i + 1)  # the key
        i = space.match(text, space.match(text, i).end() + 1).end()  # past ":"
        _, i = decoder.raw_decode(text, i)  # the value
        i = space.match(text, i).end()
        i = space.match(text, i + 1).end() if text[i] == "," else i
    return lines


def read_text_json(path: str | Path) -> dict[str, str]:
    """Read ``{id: text}``; a clear :class:`DataError` for a file that is missing, not UTF-8, malformed, not one
    object of strings, or that gives an id twice (JSON would keep only the last text)."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: accept a byte-order mark
        pairs = json.loads(text, object_pairs_hook=_Pairs)
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
    except RecursionError:
        raise DataError(
            f"Malformed JSON in {path}: nested too deeply to parse. Fix: the file must be one JSON object {{id: text}}."
        ) from None
    except OSError as err:  # a folder, no permission
        raise DataError(
            f"Text file {path} cannot be read ({err.strerror or err}). "
            "Fix: set data.text_json to a readable {id: text} file."
        ) from None
    if not isinstance(pairs, _Pairs):
        raise DataError(
            f"{path} holds a JSON {type(pairs).__name__}, expected an object {{id: text}}. "
            'Fix: write it as {"<id>": "<text>", ...}.'
        )
    counts = Counter(key for key, _ in pairs)
    bad = [(n, k, v) for n, (k, v) in enumerate(pairs) if not isinstance(v, str)]
    broken = [n for n, (k, v) in enumerate(pairs) if isinstance(v, str) and not (_encodable(k) and _encodable(v))]
    lines = _key_lines(text) if bad or broken or len(counts) < len(pairs) else []
    if len(counts) < len(pairs):
        repeated = {k: [lines[n] for n, (key, _) in enumerate(pairs) if key == k] for k, c in counts.items() if c > 1}
        listed = "\n".join(f"  id {k!r} on lines {', '.join(map(str, at))}" for k, at in list(repeated.items())[:10])
        raise DataError(
            f"Ids given more than once in {path} ({len(repeated)} id(s)); JSON keeps only the last text of each:\n"
            f"{listed}\nFix: give each id one entry (merge its texts into one string, or remove the extra entries)."
        )
    if bad:
        listed = "\n".join(f"  line {lines[n]}: id {k!r} maps to {_json_kind(v)}" for n, k, v in bad[:10])
        raise DataError(
            f"Texts that are not strings in {path} ({len(bad)} id(s)):\n{listed}\n"
            'Fix: map each id to its text as a JSON string ("<id>": "<text>").'
        )
    if broken:
        listed = "\n".join(f"  line {lines[n]}: id {pairs[n][0]!r}" for n in broken[:10])
        raise DataError(
            f"Texts with an unpaired surrogate escape (e.g. \\ud800) in {path} ({len(broken)} id(s)):\n{listed}\n"
            "Fix: such an escape is no character; re-export the file as UTF-8 text (json.dump(..., "
            "ensure_ascii=False) of str values) or remove the escape."
        )
    return dict(pairs)


def _encodable(value: str) -> bool:
    """Whether ``value`` is valid Unicode text (JSON allows ``\\ud800`` escapes that are not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
