"""Tests of reading the data (medfusion.data): the CSV, the texts (JSON, column, template) and the image lookup,
and every way they can be wrong.

The HAM10000 tests use the real metadata CSV (../shared/data) with 8x8 placeholder JPEGs; the rest build tiny
CSV/JSON/image layouts in tmp_path. Every error path must raise one DataError naming the file, the CSV line
(header = line 1), the offending id and the fix.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from data_helpers import (
    HAM_TEMPLATE,
    MODALITIES,
    all_ids,
    build,
    check_batch,
    data_error,
    decoded_texts,
    sample_rows,
    sample_text,
    write_image,
    write_layout,
)
from PIL import Image

from medfusion.data.texts import render_template


# ------------------------------------------------------------------------------------- 1. HAM10000
def test_ham_layout_is_realistic(ham_layout) -> None:
    # The fixture must exercise what the tests claim: shared lesions, both parts, missing ages, unknown sex.
    table = ham_layout.table
    assert 300 < len(table) < 1000
    assert table.groupby("lesion_id").size().max() > 1
    no_age, unknown_sex = table["age"].isna(), table["sex"] == "unknown"
    assert (no_age & ~unknown_sex).any() and (~no_age & unknown_sex).any()
    assert {p.name for p in ham_layout.image_dir.iterdir()} == {"part_1", "part_2"}
    assert all(any((ham_layout.image_dir / p).iterdir()) for p in ("part_1", "part_2"))


def test_ham_ids_without_extension_resolve_to_jpg_in_both_parts(ham_dm, ham_layout) -> None:
    paths = {}
    for split in ("train", "val", "test"):
        records = ham_dm._records[split]
        paths.update(zip(records.ids, map(Path, records.images["image"]), strict=True))
    assert set(paths) == set(ham_layout.table["image_id"])
    for image_id, path in paths.items():
        assert path.suffix == ".jpg" and path.stem == image_id and path.is_file()
    assert {path.parent.name for path in paths.values()} == {"part_1", "part_2"}


def test_ham_template_missing_age_reads_unknown_and_unknown_sex_passes(ham_dm, ham_layout) -> None:
    table = ham_layout.table
    texts = render_template(HAM_TEMPLATE, table, ham_layout.csv_path)
    for text, (_, row) in zip(texts, table.iterrows(), strict=True):
        age = "unknown" if math.isnan(row["age"]) else str(int(row["age"]))  # "80", never "80.0" or "nan"
        assert text == f"{age}-year-old {row['sex']}, lesion on the {row['localization']}."
    # The same end to end: the tokenized texts of the module decode back to them.
    decoded = decoded_texts(ham_dm)
    no_age = table.loc[table["age"].isna() & (table["sex"] != "unknown")].iloc[0]
    expected = f"unknown-year-old {no_age['sex']}, lesion on the {no_age['localization']}."
    assert decoded[no_age["image_id"]].replace(" ", "") == expected.replace(" ", "")
    unknown_sex = table.loc[(table["sex"] == "unknown") & table["age"].notna()].iloc[0]
    expected = f"{int(unknown_sex['age'])}-year-old unknown, lesion on the {unknown_sex['localization']}."
    assert decoded[unknown_sex["image_id"]].replace(" ", "") == expected.replace(" ", "")


# --------------------------------------------------------------------------------- 2. text sources
def test_text_from_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    dm = build(layout)
    dm.setup()
    decoded = decoded_texts(dm)
    texts = json.loads(layout.json_path.read_text())
    train_ids = all_ids(dm, "train")
    assert all(decoded[i] == texts[i].lower() for i in train_ids)
    check_batch(next(iter(dm.train_dataloader())), MODALITIES, image_size=16, batch_size=4)


def test_text_from_csv_column(tmp_path: Path) -> None:
    rows = sample_rows()
    for i, row in enumerate(rows):
        row["report"] = f"Report: {sample_text(row, i)}."
    layout = write_layout(tmp_path, rows)
    dm = build(layout, text_json=None, text_column="report")
    dm.setup()
    decoded = decoded_texts(dm)
    for row in rows:
        assert decoded[row["image_id"]].replace(" ", "") == row["report"].lower().replace(" ", "")


def test_text_from_template(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    dm = build(layout, text_json=None, text_template="{age}-year-old, lesion on the {site}.")
    dm.setup()
    decoded = decoded_texts(dm)
    train = set(all_ids(dm, "train"))  # other splits may hold characters the tokenizer never saw
    for row in (r for r in layout.rows if r["image_id"] in train):
        expected = f"{row['age']}-year-old, lesion on the {row['site']}."
        assert decoded[row["image_id"]].replace(" ", "") == expected.replace(" ", "")
        # ages are whole numbers in the CSV: they must not render as "30.0"
        assert ".0-" not in decoded[row["image_id"]]


def test_several_text_sources_is_an_error(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_template="{site}"), "several text sources", "text_json")


# ------------------------------------------------------------------ 3. image lookup and CSV quirks
def test_image_lookup_by_relative_path_name_and_absolute_path(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(12))
    # Like HAM's release: files in part_1/ and part_2/, while the CSV names them by file name *with* extension.
    for i, row in enumerate(layout.rows):
        source = layout.image_dir / f"{row['image_id']}.png"
        target = layout.image_dir / f"part_{1 + i % 2}" / source.name
        target.parent.mkdir(exist_ok=True)
        source.rename(target)
    rows = [dict(r) for r in layout.rows]
    for i, row in enumerate(rows):
        row["file"] = [
            f"{row['image_id']}.png",  # bare file name, searched in subfolders
            f"part_{1 + i % 2}/{row['image_id']}",  # relative path without extension
            f"./part_{1 + i % 2}/{row['image_id']}.png",  # "./" prefix
            str(layout.image_dir / f"part_{1 + i % 2}" / f"{row['image_id']}.png"),  # absolute, inside image_dir
        ][i % 4]
    write_layout(tmp_path / "csv", rows)
    dm = build(layout, csv_path=str(tmp_path / "csv" / "samples.csv"), image_column="file")
    for split in ("train", "val", "test"):
        records = dm._records[split]
        for image_id, path in zip(records.ids, map(Path, records.images["image"]), strict=True):
            assert path.name == f"{image_id}.png" and path.parent.name.startswith("part_")


def test_json_with_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text(layout.json_path.read_text(), encoding="utf-8-sig")
    assert build(layout).vocab_size > 0


def test_trailing_commas_do_not_shift_columns(tmp_path: Path) -> None:
    # "id,label\na,b," is a common export quirk; pandas' default would make the ids the index.
    layout = write_layout(tmp_path)
    lines = layout.csv_path.read_text().splitlines()
    layout.csv_path.write_text("\n".join([lines[0], *(line + "," for line in lines[1:])]) + "\n")
    dm = build(layout)
    ids = [i for split in ("train", "val", "test") for i in dm._records[split].ids]
    assert sorted(ids) == [r["image_id"] for r in layout.rows]


# --------------------------------------------------------------------------------------- 4. errors
def test_missing_image_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s002.png").unlink()
    message = data_error(lambda: build(layout), "Missing image files", "samples.csv", "line 4", "'s002'")
    assert "(1 row(s))" in message


@pytest.mark.parametrize("kind", ["random bytes", "truncated jpeg"])
def test_unreadable_image_fails_in_setup(tmp_path: Path, kind: str) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s003.png").unlink()
    bad = layout.image_dir / "s003.jpg"
    if kind == "random bytes":
        bad.write_bytes(np.random.default_rng(0).bytes(300))
    else:
        noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(noise).save(bad, "JPEG")
        bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    dm = build(layout)  # decoding is checked in setup(), not while reading
    data_error(lambda: dm.setup("fit"), "Unreadable image files", "samples.csv", "line 5", "s003.jpg")
    # Turned off, setup goes through (the bad file would only fail when loaded).
    build(layout, verify_images=False).setup("fit")


def test_image_with_trailing_bytes_is_fine(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s003.png").unlink()
    image = layout.image_dir / "s003.jpg"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(image, "JPEG")
    image.write_bytes(image.read_bytes() + b"camera metadata after the end-of-image marker")
    build(layout).setup("fit")


def test_id_without_text_in_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text())
    del texts["s004"]
    layout.json_path.write_text(json.dumps(texts))
    data_error(lambda: build(layout), "samples.json", "samples.csv", "line 6", "'s004'")


def test_label_not_in_class_names(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(6, labels=("benign", "malignant", "benign")))
    message = data_error(
        lambda: build(layout, class_names=["benign"]), "samples.csv", "line 3", "'s001'", "'malignant'"
    )
    assert "line 2" not in message and "line 4" not in message


@pytest.mark.parametrize("option", ["id_column", "label_column"])
def test_csv_without_the_named_column_lists_the_columns(tmp_path: Path, option: str) -> None:
    layout = write_layout(tmp_path)
    message = data_error(lambda: build(layout, **{option: "diagnosis_code"}), "samples.csv", "'diagnosis_code'")
    for column in ("image_id", "label", "site", "age"):
        assert repr(column) in message


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text('{\n  "s000": "a text",\n  "s001": ,\n}\n', encoding="utf-8")
    data_error(lambda: build(layout), "samples.json", "line 3", "column 11")


def test_json_not_an_object(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_text('["s000", "s001"]', encoding="utf-8")
    data_error(lambda: build(layout), "samples.json", "list")


def test_non_utf8_json(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    layout.json_path.write_bytes('{"s000": "caf\u00e9 au lait"}'.encode("latin-1"))
    data_error(lambda: build(layout), "samples.json", "UTF-8")


def test_missing_json_file(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_json=str(tmp_path / "nope.json")), "nope.json", "does not exist")


def test_missing_empty_and_header_only_csv(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, csv_path=str(tmp_path / "absent.csv")), "absent.csv", "does not exist")
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    data_error(lambda: build(layout, csv_path=str(empty)), "empty.csv", "empty")
    header_only = tmp_path / "header.csv"
    header_only.write_text("image_id,label\n")
    data_error(lambda: build(layout, csv_path=str(header_only)), "header.csv", "no rows")


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("s000,benign\ns001,malignant\ns002,benign,extra\ns003,malignant\n", "line 4"),  # ragged row
        ('s000,benign\ns001,malignant\ns002,benign\n"s003,malignant\ns004,benign\n', "line 5"),  # unbalanced quote
        ("s000,benign,x\ns001,malignant,y\n", "line 2"),  # every row too long: pandas would shift the columns
    ],
    ids=["ragged", "unbalanced-quote", "extra-field-everywhere"],
)
def test_malformed_csv(tmp_path: Path, body: str, needle: str) -> None:
    layout = write_layout(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("image_id,label\n" + body, encoding="utf-8")
    data_error(lambda: build(layout, csv_path=str(bad)), "Malformed CSV", "bad.csv", needle)


def test_image_paths_escaping_image_dir(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data")
    outside = write_image(tmp_path / "data" / "outside.png")  # exists, next to image_dir
    rows = [r | {"file": f"{r['image_id']}.png"} for r in layout.rows]
    rows[2]["file"] = "../outside.png"
    rows[5]["file"] = str(outside.resolve())
    rows[7]["file"] = "part_1/../../outside.png"
    write_layout(tmp_path / "csv", rows)
    message = data_error(
        lambda: build(layout, csv_path=str(tmp_path / "csv" / "samples.csv"), image_column="file"),
        "escape",
        "samples.csv",
        "line 4",
        "'../outside.png'",
        "line 7",
        str(outside.resolve()),
        "line 9",
    )
    assert "Missing" not in message and "(3 row(s))" in message


def test_empty_texts(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text()) | {"s001": "", "s006": "   \n"}
    layout.json_path.write_text(json.dumps(texts))
    data_error(lambda: build(layout), "Empty texts", "samples.csv", "line 3", "'s001'", "line 8", "'s006'")
    # The same from a text column with a missing value.
    rows = [r | {"report": "a report"} for r in layout.rows]
    rows[4]["report"] = ""
    column = write_layout(tmp_path / "column", rows)
    data_error(lambda: build(column, text_json=None, text_column="report"), "Empty texts", "line 6", "'s004'")


def test_missing_text_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, text_json=None, text_column="report"), "samples.csv", "'report'", "'site'")


def test_duplicated_ids(tmp_path: Path) -> None:
    rows = sample_rows(8)
    rows[5]["image_id"] = "s001"
    rows[7]["image_id"] = " s002"  # the same id once whitespace is stripped
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout), "Duplicated ids", "samples.csv", "line 3", "line 7", "'s001'", "line 4", "line 9")


def test_empty_id_and_label_values(tmp_path: Path) -> None:
    rows = sample_rows(8)
    rows[3]["label"] = ""
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout), "Empty label values", "samples.csv", "line 5", "'label'")


def test_template_naming_an_absent_column(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    message = data_error(
        lambda: build(layout, text_json=None, text_template="{age}-year-old {sex}"), "samples.csv", "['sex']"
    )
    assert "'site'" in message  # the available columns


def test_missing_image_dir(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    data_error(lambda: build(layout, image_dir=str(tmp_path / "no_images")), "no_images", "image_dir")


def test_every_bad_row_is_listed_up_to_the_limit(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(30))
    for i in (3, 8, 20):
        (layout.image_dir / f"s{i:03d}.png").unlink()
    message = data_error(lambda: build(layout), "(3 row(s))", "line 5", "line 10", "line 22", "'s003'", "'s020'")
    assert message.count("\n  line ") == 3
    for i in range(4, 16):
        (layout.image_dir / f"s{i:03d}.png").unlink(missing_ok=True)
    message = data_error(lambda: build(layout), "(14 row(s))", "... and 4 more")
    assert message.count("\n  line ") == 10


def test_line_numbers_count_blank_lines_and_multiline_reports(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(8))
    (layout.image_dir / "s005.png").unlink()
    bad = tmp_path / "reports.csv"
    lines = ["image_id,label,report"]
    for i, row in enumerate(layout.rows):
        report = '"Findings: nodule.\nImpression: benign."' if i == 1 else "short report"
        lines.append(f"{row['image_id']},{row['label']},{report}")
        if i == 2:
            lines.append("")  # a blank line, which pandas skips
    bad.write_text("\n".join(lines) + "\n")
    physical = next(n for n, line in enumerate(bad.read_text().splitlines(), start=1) if line.startswith("s005,"))
    assert physical == 9  # header, s000, s001 (two lines), s002, s003, blank, s004, s005
    data_error(
        lambda: build(layout, csv_path=str(bad), text_json=None, text_column="report"), f"line {physical}:", "'s005'"
    )
