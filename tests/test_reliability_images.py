"""Reliability of the image and text inputs: symlinks out of image_dir, ambiguous ids, decompression bombs,
JPEGs cut short and closed with an end-of-image marker, repeated ids in the JSON texts, and a WordPiece
vocabulary too small for the characters of the texts. Each bad input is one DataError (or ConfigError) naming
the file, the CSV line and the fix."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from data_helpers import Layout, build, data_error, sample_rows, write_image, write_layout
from PIL import Image

from medfusion.data import ConfigError, DataError
from medfusion.data.images import ImageIndex, check_jpeg, load_rgb
from medfusion.data.texts import read_text_json
from medfusion.data.tokenizer import SPECIAL_TOKENS, build_tokenizer
from medfusion.data.verify import verify_images


def line(row: int) -> str:
    """The CSV line of 0-based data row ``row`` of a write_layout CSV (no blank lines, header on line 1)."""
    return f"line {row + 2}:"


def with_file_column(layout: Layout, files: dict[int, str], root: Path) -> Path:
    """A copy of ``layout``'s CSV under ``root`` with a ``file`` column: ``files[row]``, else ``<id>.png``."""
    rows = [r | {"file": files.get(i, f"{r['image_id']}.png")} for i, r in enumerate(layout.rows)]
    return write_layout(root, rows).csv_path


# --------------------------------------------------------------------------------- 1. symlinks out of image_dir
def test_symlinked_file_out_of_image_dir_is_an_escape_for_an_id_without_extension(tmp_path: Path) -> None:
    # HAM10000's layout: the CSV id has no extension, so the key is not the file's name.
    layout = write_layout(tmp_path / "data")
    secret = write_image(tmp_path / "elsewhere" / "secret.png")
    link = layout.image_dir / "s003.png"
    link.unlink()
    link.symlink_to(secret)
    message = data_error(
        lambda: build(layout),
        "Image paths that escape image_dir",
        "samples.csv",
        f"{line(3)} 's003' is {link}, a symlink to {secret.resolve()}",
        "(1 row(s))",
        "a symlink must point inside it",
    )
    assert "Missing" not in message


def test_symlinks_out_of_image_dir_are_caught_however_the_file_is_found(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data", sample_rows(12))
    secret = write_image(tmp_path / "elsewhere" / "secret.png")
    links = {
        1: ("out_a.png", "out_a.png"),  # relative path with extension
        3: ("out_b", "out_b.png"),  # relative path without extension
        5: ("out_c", "sub/out_c.png"),  # stem, searched in subfolders
        7: ("out_d.png", "sub/out_d.png"),  # bare file name, searched in subfolders
        9: (str(layout.image_dir / "out_e.png"), "out_e.png"),  # absolute path inside image_dir
    }
    for _, relative in links.values():
        (layout.image_dir / relative).parent.mkdir(exist_ok=True)
        (layout.image_dir / relative).symlink_to(secret)
    csv_path = with_file_column(layout, {row: key for row, (key, _) in links.items()}, tmp_path / "csv")
    message = data_error(
        lambda: build(layout, csv_path=str(csv_path), image_column="file"),
        "Image paths that escape image_dir",
        "(5 row(s))",
        *(f"{line(row)} {key!r}" for row, (key, _) in links.items()),
    )
    assert message.count(str(secret.resolve())) == 5 and "Missing" not in message
    # The ways through a found file name the link; the absolute path resolves before lookup, to the target.
    for row in (1, 3, 5, 7):
        assert f"{layout.image_dir / links[row][1]}, a symlink to {secret.resolve()}" in message


def test_symlink_to_a_file_inside_image_dir_is_fine(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    original = layout.image_dir / "originals" / "s004.png"
    original.parent.mkdir()
    (layout.image_dir / "s004.png").rename(original)
    (layout.image_dir / "s004.png").symlink_to(Path("originals") / "s004.png")  # relative link, inside
    index = ImageIndex(layout.image_dir)
    # "s004" now names the link (top level) before the original (a subfolder): one file, and it stays inside.
    assert index.candidates("s004") == [str(layout.image_dir.resolve() / "s004.png")]
    paths = index.resolve_all(["s004", "originals/s004.png", "s005"], layout.csv_path)
    assert Path(paths[0]).resolve() == Path(paths[1]) == original.resolve()
    build(layout).setup("fit")


def test_symlinked_directory_out_of_image_dir_lets_no_file_through(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data")
    outside = tmp_path / "elsewhere"
    write_image(outside / "s006.png")
    (layout.image_dir / "s006.png").unlink()  # only reachable through the linked folder now
    (layout.image_dir / "linked").symlink_to(outside, target_is_directory=True)
    index = ImageIndex(layout.image_dir)
    assert index.candidates("s006") == [] and index.candidates("linked/s006.png") == []  # os.walk did not enter it
    data_error(lambda: build(layout), "Missing image files", f"{line(6)} no file for 's006'")
    csv_path = with_file_column(layout, {6: "linked/s006.png"}, tmp_path / "csv")
    data_error(
        lambda: build(layout, csv_path=str(csv_path), image_column="file"),
        "Image paths that escape image_dir",
        f"{line(6)} 'linked/s006.png' resolves to {(outside / 's006.png').resolve()}",
    )


# ------------------------------------------------------------------------------------------ 2. ambiguous ids
def test_same_stem_twice_in_one_folder_is_ambiguous(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data")
    write_image(layout.image_dir / "s002.jpg")  # next to s002.png
    message = data_error(
        lambda: build(layout),
        "Ambiguous image ids",
        "samples.csv",
        f"{line(2)} 's002' matches 2 files under {layout.image_dir.resolve()}: s002.jpg, s002.png",
        "with its extension (e.g. 's002.jpg')",
        "remove all but one",
    )
    assert "(1 row(s))" in message
    # Naming the file with its extension picks it.
    csv_path = with_file_column(layout, {2: "s002.jpg"}, tmp_path / "csv")
    dm = build(layout, csv_path=str(csv_path), image_column="file")
    paths = {
        i: Path(p)
        for s in ("train", "val", "test")
        for i, p in zip(dm._records[s].ids, dm._records[s].images["image"], strict=True)
    }
    assert paths["s002"].name == "s002.jpg" and paths["s001"].name == "s001.png"


def test_same_stem_in_two_subfolders_lists_the_candidates(tmp_path: Path) -> None:
    layout = write_layout(tmp_path / "data")
    for part in ("part_1", "part_2"):
        write_image(layout.image_dir / part / "s004.png")
    (layout.image_dir / "s004.png").unlink()
    message = data_error(
        lambda: build(layout),
        "Ambiguous image ids",
        f"{line(4)} 's004' matches 2 files under {layout.image_dir.resolve()}: part_1/s004.png, part_2/s004.png",
        "(e.g. 'part_1/s004.png')",
    )
    assert "no file" not in message and "Missing" not in message
    # By bare file name it is just as ambiguous; by its path it is one file.
    csv_path = with_file_column(layout, {4: "s004.png", 5: "part_2/s004.png"}, tmp_path / "csv")
    data_error(
        lambda: build(layout, csv_path=str(csv_path), image_column="file"),
        "(1 row(s))",
        f"{line(4)} 's004.png' matches 2 files",
    )


# ------------------------------------------------------------------------------------- 3. decompression bombs
def test_image_over_the_pixel_limit_names_file_line_size_and_limit(tmp_path: Path, monkeypatch) -> None:
    layout = write_layout(tmp_path)
    big = write_image(layout.image_dir / "s003.png", size=64)  # 4096 pixels; the others have 64
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL refuses more than twice this
    dm = build(layout)  # finding files opens none
    message = data_error(
        lambda: dm.setup("fit"),
        "Images too large to decode safely in",
        "samples.csv (1 row(s))",
        f"{line(3)} {big}: Image size (4096 pixels) exceeds limit of 2000 pixels",
        "PIL.Image.MAX_IMAGE_PIXELS is 1000",
        "Fix: downscale the image, or raise PIL.Image.MAX_IMAGE_PIXELS in your own code if you trust the file.",
    )
    assert "Unreadable" not in message
    # Loading it directly (no up-front check) is a DataError naming the file, not PIL's DecompressionBombError.
    data_error(lambda: load_rgb(big), str(big), "4096 pixels", "MAX_IMAGE_PIXELS is 1000", "downscale")
    # And through the dataset (verify_images off), the CSV line too.
    dm = build(layout, verify_images=False, modalities=["image"], text_json=None)
    dm.setup("fit")
    split = next(s for s in ("train", "val", "test") if "s003" in dm.datasets[s].ids)
    dataset = dm.datasets[split]
    data_error(lambda: dataset[dataset.ids.index("s003")], "line 5", str(big), "4096 pixels", "MAX_IMAGE_PIXELS")


def test_a_real_14000_square_png_is_refused_with_its_size(tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    Image.new("1", (14000, 14000)).save(path)  # 196 megapixels in ~24 KB
    assert Image.MAX_IMAGE_PIXELS is not None and 2 * Image.MAX_IMAGE_PIXELS < 14000**2
    csv_path = tmp_path / "rows.csv"
    csv_path.write_text("image_id,label\nok,a\nscan,b\n")
    small = write_image(tmp_path / "ok.png")
    data_error(
        lambda: verify_images([small, path], csv_path),
        "Images too large to decode safely in",
        f"{line(1)} {path}: Image size (196000000 pixels)",
        f"PIL.Image.MAX_IMAGE_PIXELS is {Image.MAX_IMAGE_PIXELS}",
    )


# --------------------------------------------------------------------------- 4. JPEGs cut short, closed with FFD9
def textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth structure plus noise, so that the scan data is not trivially short."""
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([128 + 90 * np.sin(x / 9 + c) * np.cos(y / 7 - c) for c in range(3)], -1)
    noise = np.random.default_rng(seed).normal(0, 15, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, **options)
    return buffer.getvalue()


FLAVOURS = {
    "baseline": {},
    "baseline-444": {"subsampling": 0},
    "restart-markers": {"restart_marker_rows": 1},
    "progressive": {"progressive": True},
}


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_jpeg_cut_short_and_closed_with_eoi_is_unreadable(tmp_path: Path, flavour: str) -> None:
    layout = write_layout(tmp_path)
    (layout.image_dir / "s003.png").unlink()
    data = jpeg_bytes(textured(160, 120), **FLAVOURS[flavour])
    bad = layout.image_dir / "s003.jpg"
    bad.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    # Why the old check (verify, then a full decode only without FFD9 at the end) let it through:
    # libjpeg fills the rest of the image and Pillow does not raise, even on a full decode.
    assert bad.read_bytes().endswith(b"\xff\xd9")
    with Image.open(bad) as image:
        image.load()
    data_error(lambda: build(layout).setup("fit"), "Unreadable image files", f"{line(3)} {bad}: truncated")


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_jpeg_check_catches_cuts_all_through_the_scan_and_passes_whole_files(tmp_path: Path, flavour: str) -> None:
    data = jpeg_bytes(textured(96, 72, seed=1), **FLAVOURS[flavour])
    path = tmp_path / "x.jpg"
    for whole in (data, data + b"camera notes after the end-of-image marker"):
        path.write_bytes(whole)
        check_jpeg(path)
    missed = []
    for fraction in np.linspace(0.35, 0.95, 13):
        cut = int(len(data) * fraction)
        path.write_bytes(data[:cut] + b"\xff\xd9")
        try:
            check_jpeg(path)
            missed.append(round(fraction, 2))
        except OSError as err:
            assert "truncated" in str(err)
        path.write_bytes(data[:cut])  # cut without the marker: PIL itself says so
        with pytest.raises(OSError):
            check_jpeg(path)
    assert not missed, f"cuts at {missed} of the file passed"


def test_grayscale_and_cmyk_jpegs_pass_the_check(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    for row, mode in ((1, "L"), (2, "CMYK")):
        (layout.image_dir / f"s00{row}.png").unlink()
        (layout.image_dir / f"s00{row}.jpg").write_bytes(jpeg_bytes(textured(40, 30).convert(mode)))
    build(layout).setup("fit")


# ------------------------------------------------------------------------------------------ 5. the JSON texts
def test_ids_given_twice_in_the_json_name_every_line(tmp_path: Path) -> None:
    layout = write_layout(tmp_path)
    texts = json.loads(layout.json_path.read_text())
    lines = ["{"] + [f"  {json.dumps(k)}: {json.dumps(v)}," for k, v in texts.items()]
    lines.insert(4, '  "s001": "a second report for s001",')  # line 5; the first s001 is on line 3
    lines.insert(9, '  "s020": "again",')  # line 10, before the first s020 (now on line 24)
    layout.json_path.write_text("\n".join(lines).rstrip(",") + "\n}\n", encoding="utf-8")
    message = data_error(
        lambda: build(layout),
        f"Ids given more than once in {layout.json_path} (2 id(s)); JSON keeps only the last text",
        "id 's001' on lines 3, 5",
        "id 's020' on lines 10, 24",
        "Fix: give each id one entry",
    )
    assert "s002" not in message


@pytest.mark.parametrize(
    ("content", "needles"),
    [
        ('{"s000": "a",\n "s001": "b"\n "s002": "c"}', ["Malformed JSON", "line 3, column 2"]),
        ("", ["Malformed JSON", "line 1, column 1"]),
        ('"just a text"', ["holds a JSON str", "expected an object"]),
        ("[" * 100_000 + "]" * 100_000, ["nested too deeply"]),
        (
            '{\n "s000": "a",\n "s001": 5,\n "s002": null,\n "s003": {"text": "c"},\n "s004": ["d"],\n "s005": true}',
            ["(5 id(s))", "line 3: id 's001' maps to a number", "line 4: id 's002' maps to null", "an object",
             "line 6: id 's004' maps to an array", "line 7: id 's005' maps to a boolean"],
        ),
    ],
    ids=["missing-comma", "empty", "top-level-string", "too-deep", "non-string-values"],
)  # fmt: skip
def test_json_reader_gives_a_data_error_for_every_bad_file(tmp_path: Path, content: str, needles: list[str]) -> None:
    path = tmp_path / "texts.json"
    path.write_text(content, encoding="utf-8")
    data_error(lambda: read_text_json(path), str(path), *needles)


def test_json_reader_names_the_undecodable_byte_and_a_folder(tmp_path: Path) -> None:
    path = tmp_path / "texts.json"
    path.write_bytes('{\n "s000": "naevus",\n "s001": "caf\u00e9-au-lait macule"\n}'.encode("latin-1"))
    data_error(lambda: read_text_json(path), str(path), "not UTF-8 (line 3: byte 0xe9)")
    data_error(lambda: read_text_json(tmp_path), str(tmp_path), "cannot be read (Is a directory)")


# ------------------------------------------------------------------------------------ 6. WordPiece vocabulary
CJK_REPORTS = [
    "皮肤镜检查显示不规则色素网络，边界不清。",
    "病灶位于背部，直径约六毫米，颜色不均匀。",
    "组织病理学检查提示交界痣，未见恶性改变。",
]


def cjk_texts(distinct: int) -> list[str]:
    """The reports above plus CJK ideographs (U+4E00 on) in 40-character notes, ``distinct`` characters in all."""
    texts = list(CJK_REPORTS)
    have = {c for t in texts for c in t}
    extra = [c for c in map(chr, range(0x4E00, 0xA000)) if c not in have][: distinct - len(have)]
    texts += ["".join(extra[i : i + 40]) + "。" for i in range(0, len(extra), 40)]
    assert len({c for t in texts for c in t}) == distinct
    return texts


def test_vocab_size_below_the_characters_of_cjk_texts_names_the_option_and_the_minimum() -> None:
    texts = cjk_texts(1800)
    needed = len(SPECIAL_TOKENS) + 2 * 1800  # each character alone and as a ## continuation
    with pytest.raises(ConfigError) as info:
        build_tokenizer("wordpiece", texts, vocab_size=2000)
    message = str(info.value)
    for needle in (
        f"data.vocab_size=2000 is below the {needed} tokens",
        "their 1800 distinct characters",
        f"Fix: set data.vocab_size to at least {needed} (a WordPiece vocabulary needs every character",
        "or use a pretrained tokenizer (data.tokenizer: <hub name or local path>)",
    ):
        assert needle in message, f"{needle!r} not in:\n{message}"
    assert isinstance(info.value, ValueError) and not isinstance(info.value, DataError)
    with pytest.raises(ConfigError):
        build_tokenizer("wordpiece", texts, vocab_size=needed - 1)
    tokenizer = build_tokenizer("wordpiece", texts, vocab_size=needed)  # the minimum itself works
    report = CJK_REPORTS[0] + CJK_REPORTS[2]
    ids = tokenizer(report)["input_ids"]
    assert tokenizer.unk_token_id not in ids and len(ids) == len(report) + 2  # one token per character, CLS, SEP


def test_suggested_vocab_size_leaves_room_for_frequent_words() -> None:
    texts = [*cjk_texts(1800), "dermoscopy naevus", "dermoscopy naevus"]
    needed = len(SPECIAL_TOKENS) + 2 * len(set("".join(texts)) - {" "})
    with pytest.raises(ConfigError, match=rf"at least {needed + 2} \({needed}, plus room for 2 frequent word\(s\);"):
        build_tokenizer("wordpiece", texts, vocab_size=2000)
    tokenizer = build_tokenizer("wordpiece", texts, vocab_size=needed + 2)
    assert tokenizer.tokenize("Dermoscopy naevus") == ["dermoscopy", "naevus"]
