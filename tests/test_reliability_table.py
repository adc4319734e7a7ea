"""Reading samples CSVs reliably: equivalent label spellings, literal "NA" cells, rare classes per split,
other separators, unclosed quotes and option ranges (medfusion.data.table, splits, datamodule)."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from pathlib import Path

import pytest
from data_helpers import build, data_error, sample_rows, write_layout

from medfusion.data import ConfigError, DemoDataModule
from medfusion.data import TestSet as ExternalTestSet  # aliased: pytest would try to collect Test*
from medfusion.data.demo import make_demo_data
from medfusion.data.table import label_key, read_records


def labels_of(dm, split: str = "train") -> list[str]:
    """The class name of every sample of ``split``, in the order of its records."""
    return [dm.class_names[y] for y in dm._labels[split]]


def relabelled(n: int, labels: tuple[str, ...], changes: dict[int, str]) -> list[dict[str, str]]:
    rows = sample_rows(n, labels)
    for i, label in changes.items():
        rows[i]["label"] = label
    return rows


def warned(make, *messages: str) -> object:
    """Run ``make``; each of ``messages`` must be exactly one warning's text."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = make()
    texts = [str(w.message) for w in caught]
    for message in messages:
        assert message in texts, f"{message!r} not among the warnings:\n" + "\n".join(texts)
    return result


# ------------------------------------------------------------------------- 1. equivalent label spellings
def test_label_key_equates_case_spaces_and_number_format() -> None:
    assert label_key("B") == label_key(" b ") == label_key("b")
    assert label_key("1") == label_key("1.0") == label_key("01") == label_key("1e0") == label_key("+1.000")
    assert label_key("0") == label_key("-0.0")
    assert label_key("1") != label_key("10") and label_key("#1") != label_key("1") and label_key("1") != label_key("l")
    assert label_key("12345678901234567890") != label_key("12345678901234567891")  # exact, not float-rounded
    assert label_key("1e9999999999999999999") == label_key("1E9999999999999999999")  # too large: compared as text


def test_labels_differing_in_case_are_an_error_listing_each_spelling(tmp_path: Path) -> None:
    # evens "B", odds "M"; row 5 ("b") and row 9 (" b", stripped to "b") and row 3 ("m") differ in case only
    layout = write_layout(tmp_path, relabelled(24, ("B", "M"), {3: "m", 5: "b", 9: " b"}))
    message = data_error(lambda: build(layout), str(layout.csv_path))
    assert message == (
        f"Labels that differ only in case, surrounding spaces or number format in {layout.csv_path} (2 group(s)):\n"
        "  'B' (12 row(s), first on line 2), 'b' (2 row(s), first on line 7)\n"
        "  'M' (9 row(s), first on line 3), 'm' (1 row(s), first on line 5)\n"
        "Fix: spell each class one way, or set data.merge_equivalent_labels: true to merge each group into its most "
        "frequent spelling."
    )


def test_numerically_equal_labels_are_an_error(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, relabelled(24, ("1", "2"), {4: "1.0", 7: "01", 8: "01"}))
    message = data_error(lambda: build(layout), str(layout.csv_path), "(1 group(s))")
    group = "  '1' (10 row(s), first on line 2), '1.0' (1 row(s), first on line 6), '01' (2 row(s), first on line 9)\n"
    assert group in message


def test_merge_equivalent_labels_merges_into_the_most_frequent_spelling(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, relabelled(24, ("B", "M"), {3: "m", 5: "b", 9: " b"}))
    dm = warned(
        lambda: build(layout, merge_equivalent_labels=True),
        f"data.merge_equivalent_labels: merged labels of {layout.csv_path}: 'b' (2 row(s)) into 'B'; "
        "'m' (1 row(s)) into 'M'",
    )
    assert dm.class_names == ["B", "M"]
    expected = {r["image_id"]: "B" if i % 2 == 0 or i in (5, 9) else "M" for i, r in enumerate(layout.rows)}
    for split in ("train", "val", "test"):
        assert labels_of(dm, split) == [expected[i] for i in dm._records[split].ids]
    assert sum(dm.class_counts) == len(dm._labels["train"])


def test_merge_ties_go_to_the_first_spelling_seen(tmp_path: Path) -> None:
    # "1.0" first (row 0) and "1" both 6 times: "1.0" is kept; "2" and "02" tie too, "02" seen first (row 1)
    rows = relabelled(24, ("1.0", "02", "1", "2"), {})
    layout = write_layout(tmp_path, rows)
    dm = warned(
        lambda: build(layout, merge_equivalent_labels=True),
        f"data.merge_equivalent_labels: merged labels of {layout.csv_path}: '1' (6 row(s)) into '1.0'; "
        "'2' (6 row(s)) into '02'",
    )
    assert dm.class_names == ["02", "1.0"]
    assert Counter(name for split in ("train", "val", "test") for name in labels_of(dm, split)) == {"02": 12, "1.0": 12}


def test_label_equivalent_to_a_given_class_name_asks_did_you_mean(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, relabelled(24, ("benign", "malignant"), {6: "Benign", 11: "MALIGNANT "}))
    message = data_error(
        lambda: build(layout, class_names=["malignant", "benign"]), str(layout.csv_path), "(2 group(s))"
    )
    assert "  'Benign' (1 row(s), first on line 8): did you mean the class 'benign'?\n" in message
    assert "  'MALIGNANT' (1 row(s), first on line 13): did you mean the class 'malignant'?\n" in message
    assert message.endswith(
        "Fix: spell them as the classes are spelled, or set data.merge_equivalent_labels: true to merge them into "
        "those."
    )
    dm = build(layout, class_names=["malignant", "benign"], merge_equivalent_labels=True)
    assert dm.class_names == ["malignant", "benign"]
    assert all(name in ("malignant", "benign") for split in ("train", "val", "test") for name in labels_of(dm, split))


def test_external_test_set_label_in_another_case(tmp_path: Path) -> None:
    main = write_layout(tmp_path / "main")
    ext_rows = [
        {"image_id": "x0", "label": "benign", "site": "back"},
        {"image_id": "x1", "label": "Benign", "site": "face"},
        {"image_id": "x2", "label": "malignant", "site": "face"},
    ]
    ext = write_layout(tmp_path / "ext", ext_rows, name="external")
    spec = ExternalTestSet(csv_path=str(ext.csv_path), image_dir=str(ext.image_dir), text_json=str(ext.json_path))
    message = data_error(lambda: build(main, test_sets={"ext": spec}), str(ext.csv_path))
    assert "  'Benign' (1 row(s), first on line 3): did you mean the class 'benign'?\n" in message
    dm = build(main, test_sets={"ext": spec}, merge_equivalent_labels=True)
    assert dm._test_labels[1] == [0, 0, 1] and dm.class_names == ["benign", "malignant"]


# --------------------------------------------------------------------------- 2. which cells are missing
def test_na_like_cells_are_text_by_default(tmp_path: Path) -> None:
    rows = relabelled(24, ("NA", "null"), {})
    rows[4]["image_id"] = "None"
    rows[5]["image_id"] = "nan"
    layout = write_layout(tmp_path, rows)
    dm = build(layout)
    assert dm.class_names == ["NA", "null"]
    ids = {i for split in ("train", "val", "test") for i in dm._records[split].ids}
    assert {"None", "nan"} <= ids and len(ids) == 24


def test_na_values_option_marks_cells_missing(tmp_path: Path) -> None:
    rows = relabelled(24, ("benign", "malignant"), {2: "NA", 7: "n/a"})
    layout = write_layout(tmp_path, rows)
    assert "NA" in build(layout, test_ratio=0.0, val_ratio=0.3).class_names  # by default a (rare) class
    message = data_error(
        lambda: build(layout, na_values=["NA", "n/a"]), "Empty label values", str(layout.csv_path), "(2 row(s))"
    )
    assert "  line 4: column 'label'\n  line 9: column 'label'\n" in message


def test_templates_render_numbers_and_missing_cells_as_before(tmp_path: Path) -> None:
    def rendered(body: str, **kwargs) -> list[str | None]:
        csv_path = tmp_path / "t.csv"
        csv_path.write_text("image_id,label,age,sex\n" + body)
        template = "{age}-year-old {sex}"
        options = {"id_column": "image_id", "label_column": "label", "image_index": None, "text_template": template}
        return read_records(csv_path, **options, **kwargs).texts

    # a numeric column with empty cells: whole numbers without ".0", empty cells "unknown" (HAM10000's age)
    assert rendered("a,x,45.0,male\nb,x,,\nc,y,60,None\n") == [
        "45-year-old male",
        "unknown-year-old unknown",
        "60-year-old None",
    ]
    # "NA" is text unless named in na_values (an R export): then the column is numeric again
    body = "a,x,45.0,male\nb,x,NA,NA\nc,y,60,female\n"
    assert rendered(body) == ["45.0-year-old male", "NA-year-old NA", "60-year-old female"]
    assert rendered(body, na_values=["NA"]) == ["45-year-old male", "unknown-year-old unknown", "60-year-old female"]


# ------------------------------------------------------------------------------ 3. rare classes per split
def test_class_missing_from_val_and_test_splits_is_warned(tmp_path: Path) -> None:
    labels = ["benign", "malignant"] * 3 + ["rare", "rare", "benign", "malignant"]
    folds = ["train", "train", "val", "val", "test", "train", "train", "test", "train", "train"]
    rows = [r | {"label": y, "fold": f} for r, y, f in zip(sample_rows(10), labels, folds, strict=True)]
    layout = write_layout(tmp_path, rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = build(layout, split_column="fold")
    texts = [str(w.message) for w in caught if "Classes" in str(w.message)]
    assert texts == [
        f"Classes with no row in the val or test split of {layout.csv_path} (rows per split): "
        "'malignant' (train 3, val 1, test 0), 'rare' (train 1, val 0, test 1); their per-class metrics are "
        "undefined there. Fix: add rows of these classes."
    ]  # and none about too few rows: the split column sets the splits
    assert dm.class_names == ["benign", "malignant", "rare"] and dm.class_counts == [2, 3, 1]


def test_class_with_fewer_rows_than_random_splits_is_warned(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, relabelled(24, ("benign", "malignant"), {5: "rare", 9: "rare"}))
    dm = warned(
        lambda: build(layout),
        f"Classes with no row in the val or test split of {layout.csv_path} (rows per split): "
        "'rare' (train 2, val 0, test 0); their per-class metrics are undefined there. Fix: add rows of these classes.",
        f"Classes with fewer than 3 rows in {layout.csv_path} cannot have a row in each of the 3 random splits: "
        "'rare' (train 2, val 0, test 0). Fix: add rows of these classes, or merge or drop them.",
    )
    assert dm.class_counts[dm.class_names.index("rare")] == 2
    # Without a test split two rows suffice (one train, one val) only when they land in both; here none is in val.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build(layout, test_ratio=0.0)
    texts = [str(w.message) for w in caught]
    assert not any("fewer than" in t for t in texts)
    assert any("no row in the val split" in t and "'rare' (train 2, val 0)" in t for t in texts)


def test_class_without_training_rows_is_still_an_error(tmp_path: Path) -> None:
    rows = relabelled(12, ("benign", "malignant"), {2: "rare"})
    for i, row in enumerate(rows):
        row["fold"] = "val" if i == 2 or i % 4 == 3 else "train"
    layout = write_layout(tmp_path, rows)
    data_error(lambda: build(layout, split_column="fold", test_ratio=0.0), "['rare']", "no training rows")


# ------------------------------------------------------------------------------------- 4. separators
@pytest.mark.parametrize("sep", [";", "\t", "|"], ids=["semicolon", "tab", "pipe"])
def test_other_separator_is_named_and_csv_sep_reads_it(tmp_path: Path, sep: str) -> None:
    layout = write_layout(tmp_path)
    lines = ["image_id,label,report".replace(",", sep)]
    lines += [f"{r['image_id']}{sep}{r['label']}{sep}big, irregular" for r in layout.rows]  # commas in a field
    other = tmp_path / "other.csv"
    other.write_text("\n".join(lines) + "\n")
    message = data_error(lambda: build(layout, csv_path=str(other)), str(other))
    assert message == (
        f"{other} has no column(s) ['image_id', 'label'] when split by ',': its header (line 1) looks "
        f"{sep!r}-separated, with columns ['image_id', 'label', 'report']. Fix: set data.csv_sep: {sep!r}, "
        "or save the file comma-separated."
    )
    dm = build(layout, csv_path=str(other), csv_sep=sep, text_json=None, text_column="report")
    assert dm.class_names == ["benign", "malignant"] and dm._records["train"].texts[0] == "big, irregular"
    # the other way round: a comma-separated file read with csv_sep ';'
    message = data_error(lambda: build(layout, csv_sep=";"), "looks ','-separated", "save the file semicolon-separated")
    assert "Fix: set data.csv_sep: ','" in message


def test_line_numbers_follow_csv_sep_in_quoted_multiline_fields(tmp_path: Path) -> None:
    layout = write_layout(tmp_path, sample_rows(6))
    (layout.image_dir / "s004.png").unlink()
    lines = ["image_id;label;report"]
    for i, r in enumerate(layout.rows):
        report = '"Findings: a; b.\nImpression: benign."' if i == 1 else "short"
        lines.append(f"{r['image_id']};{r['label']};{report}")
    other = tmp_path / "semi.csv"
    other.write_text("\n".join(lines) + "\n")
    # header, s000, s001 (two lines), s002, s003, s004 on line 7
    data_error(
        lambda: build(layout, csv_path=str(other), csv_sep=";", text_json=None, text_column="report"),
        "line 7:",
        "'s004'",
    )


# ----------------------------------------------------------------------------------- 5. unclosed quotes
@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_unclosed_quote_reports_the_line_it_opens_on(tmp_path: Path, newline: str) -> None:
    reports = {
        1: '"Findings: nodule.\nImpression: benign."',  # two lines
        2: 'a 5" lesion',  # a quote inside an unquoted field is text
        3: '"He said ""fine""\nand left"',  # escaped quotes, two lines
        6: '"never closed, ',  # line 10
    }
    lines = ["image_id,label,report"]
    for i, r in enumerate(sample_rows(10)):
        lines.append(f"{r['image_id']},{r['label']},{reports.get(i, 'short')}")
    bad = tmp_path / "bad.csv"
    bad.write_bytes(("\n".join(lines) + "\n").replace("\n", newline).encode())
    layout = write_layout(tmp_path / "layout")
    message = data_error(lambda: build(layout, csv_path=str(bad)), str(bad))
    assert message == (
        f'Malformed CSV {bad}: the quoted field that starts on line 10 is never closed (a " without its closing ", '
        'so the rest of the file is read as one field). Fix: close the quote, or double each " inside a quoted '
        'field ("").'
    )


def test_row_with_too_many_fields_after_a_multiline_field_names_its_line(tmp_path: Path) -> None:
    # pandas says "Expected 3 fields in line 5, saw 5", counting the two-line report once; the row is on line 6
    bad = tmp_path / "bad.csv"
    bad.write_text('image_id,label,report\ns000,benign,short\ns001,benign,"two\nlines"\n\ns002,benign,x,,\n')
    layout = write_layout(tmp_path / "layout")
    message = data_error(lambda: build(layout, csv_path=str(bad)), str(bad))
    assert message.startswith(f"Malformed CSV {bad}: line 6 has 5 fields, where the rows before it have 3. Fix: ")


# -------------------------------------------------------------------------------------- 6. option ranges
@pytest.mark.parametrize(
    ("option", "value", "accepts"),
    [
        ("batch_size", 0, "an integer >= 1"),
        ("image_size", -3, "an integer >= 1"),
        ("max_length", 0, "an integer >= 1"),
        ("vocab_size", 0, "an integer >= 1"),
        ("num_workers", -1, "an integer >= 0"),
        ("batch_size", 2.5, "an integer >= 1"),
        ("val_ratio", 1.0, "a fraction in [0, 1)"),
        ("val_ratio", -0.1, "a fraction in [0, 1)"),
        ("test_ratio", float("nan"), "a fraction in [0, 1)"),
        ("csv_sep", ";;", "one character other than a quote or line break, e.g. ',' ';' '\\t' '|'"),
    ],
)
def test_option_out_of_range_is_a_config_error_before_reading(
    tmp_path: Path, option: str, value: object, accepts: str
) -> None:
    layout = write_layout(tmp_path, sample_rows(6))
    with pytest.raises(ConfigError) as info:
        build(layout, csv_path=str(tmp_path / "absent.csv"), **{option: value})  # no DataError: nothing is read
    assert str(info.value) == (
        f"data.{option}={value!r} is invalid: it must be {accepts}. Fix: set --data.{option} to such a value."
    )


def test_ratios_must_leave_rows_for_training(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    with pytest.raises(ConfigError, match=re.escape("data.test_ratio=0.5 is invalid: it must be below 1 - ")):
        build(layout, val_ratio=0.5, test_ratio=0.5)
    dm = build(layout, val_ratio=0.5, test_ratio=0.0, num_workers=0)  # the bounds themselves are valid
    assert len(dm._records["test"].ids) == 0 and len(dm._records["val"].ids) == 12


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"num_samples": 5}, "data.num_samples=5 is invalid: it must be an integer >= 6 (at least 1 per class)."),
        (
            {"num_samples": 59, "long_tail": True},
            "data.num_samples=59 is invalid: it must be an integer >= 60 (at least 10 per class with data.long_tail).",
        ),
        ({"demo_image_size": 15}, "data.demo_image_size=15 is invalid: it must be an integer >= 16."),
    ],
)
def test_demo_options_are_checked_before_generating(tmp_path: Path, options: dict, message: str) -> None:
    root = tmp_path / "demo"
    with pytest.raises(ConfigError) as info:
        DemoDataModule(root=str(root), **{"num_samples": 60, "demo_image_size": 16} | options)
    assert str(info.value).startswith(message)
    assert not root.exists()


def test_demo_minimums_are_the_generators(tmp_path: Path) -> None:
    for kwargs in ({"num_samples": 5}, {"num_samples": 59, "long_tail": True}, {"image_size": 15}):
        with pytest.raises(ValueError):
            make_demo_data(tmp_path / "too_small", **{"num_samples": 60, "image_size": 16} | kwargs)
    make_demo_data(tmp_path / "smallest", num_samples=6, image_size=16)
    make_demo_data(tmp_path / "smallest_long_tail", num_samples=60, image_size=16, long_tail=True)
    assert len(list((tmp_path / "smallest_long_tail" / "images").glob("*.png"))) == 60
