"""The read and checked data of a configuration (records of every CSV, splits, classes, tabular statistics, the
tokenizer, counts), stored once and loaded by the other processes of a DDP job and by later runs.

Under DDP every rank builds the datamodule: Lightning's launcher starts ranks 1..N-1 after rank zero has built
it, so they find its entry here and load it instead of reading, indexing, splitting and tokenizer-training again.
A later run over the same, unchanged inputs loads it too. An entry is named by a hash of every option that shapes
the result, each input file's resolved path, size and modification time, every image folder's modification time
(a file added, removed or renamed changes it), the reading code itself and the pandas and tokenizers versions:
anything that could change the result gives a new entry, and a stale one is never read. Entries are JSON (no
pickle: nothing in the cache can run code), written atomically; old ones stay until you delete them.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import tokenizers

from medfusion.data.reader import SPLITS, ReadData
from medfusion.data.table import Records
from medfusion.data.tabular import TabularPreprocessor
from medfusion.data.verify import file_key
from medfusion.runs.checkpoints import tokenizer_from_state, tokenizer_state

SETUP_FORMAT = 1
# The modules whose code decides what reading gives: their source is part of every key.
_READING_MODULES = (
    "reader",
    "table",
    "splits",
    "texts",
    "tabular",
    "tokenizer",
    "images",
    "token_ids",
    "modalities",
    "setup_cache",
)


def to_json(data: ReadData) -> dict[str, Any]:
    """``data`` as JSON values (the tokenizer as its ``tokenizer.json`` string, the tabular statistics as numbers);
    a TypeError for a tokenizer that has no such form (a slow, Python-only one)."""
    table = data.table
    position = {row: i for i, row in enumerate(table.rows)} if table is not None else {}
    return {
        "format": SETUP_FORMAT,
        "table": _records_json(table) if table is not None else None,
        # splits as positions in the table, so that a load shares the table's lists between them
        "splits": {s: [position[r] for r in rec.rows] for s, rec in data.records.items()} if table else None,
        "csv_path": str(data.records["train"].csv_path),  # of the empty splits when there is no table
        "labels": data.labels,
        "class_names": data.class_names,
        "class_counts": data.class_counts,
        "tabular": data.tabular.state_dict() if data.tabular is not None else None,
        "tests": [[name, _records_json(rec), labels] for name, rec, labels in data.tests],
        "predict": _records_json(data.predict) if data.predict is not None else None,
        "tokenizer": tokenizer_state(data.tokenizer),
        "truncated": data.truncated,
        "warnings": data.warnings,
    }


def from_json(values: dict[str, Any]) -> ReadData:
    """The :class:`ReadData` :func:`to_json` gave."""
    if values.get("format") != SETUP_FORMAT:
        raise ValueError(f"format {values.get('format')!r}, not {SETUP_FORMAT}")
    table = _records_from_json(values["table"]) if values["table"] is not None else None
    records = {s: table.subset(rows) for s, rows in values["splits"].items()} if table is not None else {}
    return ReadData(
        table=table,
        records=records or dict.fromkeys(SPLITS, Records.empty(values["csv_path"])),
        labels=values["labels"],
        class_names=values["class_names"],
        class_counts=values["class_counts"],
        tabular=TabularPreprocessor.from_state(values["tabular"]) if values["tabular"] is not None else None,
        tests=[(name, _records_from_json(rec), labels) for name, rec, labels in values["tests"]],
        predict=_records_from_json(values["predict"]) if values["predict"] is not None else None,
        tokenizer=tokenizer_from_state(values["tokenizer"]) if values["tokenizer"] is not None else None,
        truncated=values["truncated"],
        warnings=[(category, message) for category, message in values["warnings"]],
    )


def _records_json(records: Records) -> dict[str, Any]:
    tabular = None
    if records.tabular is not None:
        tabular = {str(c): records.tabular[c].astype(object).where(records.tabular[c].notna(), None).tolist()
                   for c in records.tabular.columns}  # fmt: skip
    return {
        "csv_path": str(records.csv_path),
        "ids": records.ids,
        "labels": records.labels,
        "images": records.images,
        "texts": records.texts,
        "splits": records.splits,
        "groups": records.groups,
        "rows": records.rows,
        "tabular": tabular,
        "crops": records.crops,
        "stacks": records.stacks,
    }


def _records_from_json(data: dict[str, Any]) -> Records:
    tabular = pd.DataFrame(data["tabular"]) if data["tabular"] is not None else None
    if tabular is not None:  # numbers back as pandas read them (floats with NaN), text as text with NaN
        tabular = tabular.infer_objects().fillna(value=float("nan"))
    return Records(
        Path(data["csv_path"]),
        data["ids"],
        data["labels"],
        data["images"],
        data["texts"],
        data["splits"],
        data["groups"],
        data["rows"],
        tabular,
        data["crops"],
        data["stacks"],
    )


def tree_signature(root: str | Path) -> str:
    """A hash of the modification time of every folder under ``root`` (a symlinked folder is not entered, as the
    image index does not): a file added, removed or renamed anywhere below changes it."""
    digest = hashlib.blake2b(digest_size=16)
    folders = [str(Path(root).expanduser().resolve())]
    while folders:
        folder = folders.pop()
        digest.update(f"{folder}|{os.stat(folder).st_mtime_ns}\n".encode())
        with os.scandir(folder) as entries:
            folders += [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    return digest.hexdigest()


def setup_key(options: dict[str, Any], files: Sequence[str | None], trees: Sequence[str | None]) -> str:
    """The entry name for ``options`` read from ``files`` and image folders ``trees`` (None: not set)."""
    code = hashlib.blake2b(digest_size=16)
    package = Path(__file__).parent
    for module in _READING_MODULES:
        code.update((package / f"{module}.py").read_bytes())
    parts = {
        "format": SETUP_FORMAT,
        "code": code.hexdigest(),
        "versions": [pd.__version__, tokenizers.__version__],
        "options": options,
        "files": [file_key(f) if f is not None and os.path.isfile(f) else f for f in files],
        "trees": [tree_signature(t) if t is not None and os.path.isdir(t) else t for t in trees],
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def load_or_read(directory: str | Path, key: str, read: Callable[[], ReadData]) -> tuple[ReadData, bool]:
    """The entry ``key`` under ``directory/setup`` and True when there is one, else ``read()``, stored there (an
    unusable directory is warned about and skipped), and False. Warnings that reading raised are shown either way."""
    path = Path(directory).expanduser() / "setup" / f"{key}.json"
    data = None
    if path.is_file():
        try:
            with open(path, encoding="utf-8") as f:
                data = from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError) as err:
            warnings.warn(f"Ignoring the unreadable set-up cache entry {path} ({err}); reading the data", stacklevel=2)
    loaded = data is not None
    if data is None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            data = read()
        data.warnings = [(w.category.__name__, str(w.message)) for w in caught]
        _store(path, data)
    for category, message in data.warnings:
        warnings.warn(message, _category(category), stacklevel=2)
    return data, loaded


def _category(name: str) -> type[Warning]:
    """The warning class called ``name`` (a builtin or Lightning's), UserWarning otherwise."""
    from lightning.fabric.utilities.warnings import PossibleUserWarning

    known = {c.__name__: c for c in (UserWarning, RuntimeWarning, FutureWarning, PossibleUserWarning)}
    return known.get(name, UserWarning)


def _store(path: Path, data: ReadData) -> None:
    staging = path.with_name(f"{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(staging, "w", encoding="utf-8") as f:
            json.dump(to_json(data), f)
        os.replace(staging, path)
    except (OSError, TypeError) as err:
        warnings.warn(f"Could not store the data set-up in {path} ({err}); it is read again next run", stacklevel=3)
    finally:
        staging.unlink(missing_ok=True)
