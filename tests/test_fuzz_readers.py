"""Fuzzing the readers: mutated CSV bytes and JSON texts give either valid records (a datamodule) or one DataError
naming the file, with a line number when the problem is in specific rows, and never any other exception."""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from data_helpers import build, data_error, sample_rows, write_layout
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medfusion.data import DataError, MultimodalDataModule
from medfusion.data.table import Records, read_records

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
IDS = [f"s{i:03d}" for i in range(12)]

TRICKY = [
    "",
    " ",
    "NA",
    "None",
    "null",
    "N/A",
    "nan",
    "a,b",
    'say "hi"',
    '"',
    '""',
    "x\ny",
    "x\r\ny",
    "a;b",
    "a|b",
    "a\tb",
    "1",
    "1.0",
    "01",
    "B",
    "b",
    "\ufeff",
    "é",
    "\x00",
]
cells = st.one_of(st.sampled_from(TRICKY), st.text(max_size=6))
ids = st.sampled_from([*IDS, "", " s001", "None"])  # drawn into a row of other ids: duplicated ids
labels = st.sampled_from(["benign", "malignant"] * 4 + ["Benign", "1", "1.0", "", "NA", "a,b"])
COLUMNS = ["image_id", "label", "report", "age"]


@st.composite
def csv_bytes(draw: st.DrawFn, min_rows: int = 1) -> bytes:
    """A CSV of ``min_rows`` to 12 rows, well quoted or raw, with random header columns, separators and a few
    tricky cells, extra fields and byte mutations."""
    header = draw(st.lists(st.sampled_from([*COLUMNS, "extra", "image_id"]), min_size=1, max_size=6))
    if draw(st.sampled_from([True] * 4 + [False])):  # mostly all the columns, some more
        header = COLUMNS + header[: draw(st.integers(0, 2))]
    rows = []
    for sample_id in draw(st.permutations(IDS))[: draw(st.integers(min_rows, len(IDS)))]:
        values = {"image_id": sample_id, "label": draw(labels), "age": draw(st.sampled_from(["45", "45.0", "", "NA"]))}
        rows.append([values.get(c, "a report") for c in header])
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3])) if rows else 0):  # a few tricky cells or extra fields
        row = draw(st.sampled_from(rows))
        at = draw(st.integers(0, len(row)))
        if at < len(row):
            row[at] = draw(ids) if at < len(header) and header[at] == "image_id" else draw(cells)
        else:
            row.append(draw(cells))
    sep = draw(st.sampled_from([","] * 6 + [";", "\t"]))
    if draw(st.booleans()):
        buffer = io.StringIO()
        csv.writer(buffer, delimiter=sep, lineterminator=draw(st.sampled_from(["\n", "\r\n"]))).writerows(
            [header, *rows]
        )
        text = buffer.getvalue()
    else:
        text = "".join(sep.join(row) + "\n" for row in [header, *rows])
    data = text.encode("utf-8", errors="surrogatepass")
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["insert", "truncate", "duplicate", "bom"]))
        if kind == "insert":
            piece = draw(st.sampled_from([b"\xff", b"\xc3", b"\x00", b'"', b",", b"\n", b"\r", b";", b"\r\n", b"\n\n"]))
            data = data[:at] + piece + data[at:]
        elif kind == "truncate":
            data = data[:at]
        elif kind == "duplicate":  # the line holding byte ``at`` twice
            start, end = data.rfind(b"\n", 0, at) + 1, data.find(b"\n", at)
            line = data[start : len(data) if end < 0 else end + 1]
            data = data[:start] + line + line + data[start:]
        else:
            data = b"\xef\xbb\xbf" + data
    return data


def physical_lines(data: bytes) -> int:
    return data.count(b"\n") + data.count(b"\r") - data.count(b"\r\n") + 1


def outcome(make: Callable[[], object], files: dict[Path, bytes]) -> object | None:
    """``make()``'s result, or None after a DataError that names one of ``files`` and only lines they have."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return make()
    except DataError as err:
        message = str(err)
        assert any(str(f) in message for f in files), message
        assert "\nFix: " in message or ". Fix: " in message, message
        if re.search(r"\(\d+ row\(s\)\)", message):  # a problem in specific rows names their lines
            assert re.search(r"line \d+", message), message
        longest = max(physical_lines(data) for data in files.values())
        assert all(1 <= int(n) <= longest for n in re.findall(r"\bline (\d+)", message)), message
        return None


def check_records(records: Records, texts: bool) -> None:
    n = len(records.ids)
    assert n > 0 and len(records.labels) == len(records.rows) == n
    assert len(set(records.ids)) == n
    assert all(i and i == i.strip() for i in records.ids)
    assert all(label and label == label.strip() for label in records.labels)
    if texts:
        assert len(records.texts) == n and all(isinstance(t, str) and t.strip() for t in records.texts)


@FUZZ
@given(data=csv_bytes(), source=st.sampled_from(["column", "template", "json", "none"]))
def test_read_records_gives_records_or_a_data_error(tmp_path: Path, data: bytes, source: str) -> None:
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "samples.csv"
    path.write_bytes(data)
    text = {
        "column": {"text_column": "report"},
        "template": {"text_template": "{age}-year-old, {report}"},
        "json": {"text_json": {i: f"text of {i}" for i in IDS}, "json_path": "texts.json"},
        "none": {},
    }[source]
    options = {"id_column": "image_id", "label_column": "label", "image_index": None}
    records = outcome(lambda: read_records(path, **options, **text), {path: data})
    if records is not None:
        check_records(records, texts=source != "none")


@st.composite
def json_text(draw: st.DrawFn) -> str:
    """Texts for ``IDS``: valid, or malformed, not an object, with a BOM, a duplicated key or one id's value not a
    string (a number, NaN, null, an array nested too deep to parse, ...)."""
    texts = {i: f"a lesion, {i}" for i in IDS}
    kinds = ["truncated", "not_object", "value", "duplicate", "bom", "raw"]
    kind = draw(st.sampled_from(["valid"] * len(kinds) + kinds))
    text = json.dumps(texts)
    if kind == "truncated":
        text = text[: draw(st.integers(0, len(text) - 1))]
    elif kind == "not_object":
        text = draw(st.sampled_from(["[]", '["a"]', '"text"', "1", "null", "true", json.dumps(list(texts.items()))]))
    elif kind == "value":
        key = draw(st.sampled_from(IDS))
        deep = "[" * 10**5 + "]" * 10**5  # too deep for the parser's recursion
        value = draw(st.sampled_from(["1", "1.5", "null", "true", '["a"]', '{"a": "b"}', "NaN", deep]))
        text = json.dumps({k: v for k, v in texts.items() if k != key})[:-1] + f", {json.dumps(key)}: {value}}}"
    elif kind == "duplicate":
        text = text[:-1] + ', "s000": "another text"}'
    elif kind == "bom":
        text = "\ufeff" + text
    elif kind == "raw":
        text = draw(st.text(max_size=20))
    return text


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_layout(tmp_path_factory.mktemp("fuzz_images"), sample_rows(len(IDS))).image_dir


@FUZZ
@given(
    data=csv_bytes(min_rows=8),
    texts=json_text(),
    json_bytes=st.sampled_from([b""] * 9 + [b"\xff"]),
    modalities=st.sampled_from([["image", "text"], ["text"], ["image"]]),
    options=st.fixed_dictionaries(
        {
            "csv_sep": st.sampled_from([",", ",", ";", "\t"]),
            "na_values": st.sampled_from([None, ["NA"]]),
            "merge_equivalent_labels": st.booleans(),
        }
    ),
)
def test_datamodule_gives_a_module_or_a_data_error(
    tmp_path: Path, image_dir: Path, data: bytes, texts: str, json_bytes: bytes, modalities: list[str], options: dict
) -> None:
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    csv_path, json_path = root / "samples.csv", root / "texts.json"
    csv_path.write_bytes(data)
    json_data = texts.encode("utf-8", errors="surrogatepass") + json_bytes
    json_path.write_bytes(json_data)

    def make() -> MultimodalDataModule:
        dm = MultimodalDataModule(
            csv_path=str(csv_path),
            image_dir=str(image_dir),
            text_json=str(json_path),
            modalities=modalities,
            image_size=16,
            batch_size=4,
            augment=False,
            val_ratio=0.25,
            test_ratio=0.0,
            **options,
        )
        dm.setup("fit")
        return dm

    dm = outcome(make, {csv_path: data, json_path: json_data})
    if dm is not None:
        batch = next(iter(dm.train_dataloader()))
        assert set(batch["id"]) <= set(IDS) and batch["label"].max() < dm.num_classes
        check_records(dm._table, texts="text" in modalities)


def test_json_text_with_a_lone_surrogate_is_a_data_error(tmp_path: Path) -> None:
    """Found by fuzzing: ``"\\ud800"`` is valid JSON but no valid text; the tokenizer failed on it with a
    UnicodeEncodeError instead of a DataError naming the JSON file and the id."""
    layout = write_layout(tmp_path, sample_rows(8))
    texts = {i: t for i, t in json.loads(layout.json_path.read_text()).items() if i != "s002"}
    layout.json_path.write_text(json.dumps(texts)[:-1] + ', "s002": "\\ud800 lesion"}')
    data_error(lambda: build(layout), str(layout.json_path), "line 1: id 's002'", "unpaired surrogate", "Fix:")
