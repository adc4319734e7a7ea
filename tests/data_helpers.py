"""Helpers of the data-layer tests (not a test module): tiny CSV/JSON/image layouts in tmp_path, the datamodule
built over them, the DataError check and the batch contract.

Every error path must raise one DataError naming the file, the CSV line (header = line 1), the offending id and
the fix; :func:`data_error` checks the needles and the fix.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from medfusion.data import DataError, MultimodalDataModule

HAM_TEMPLATE = "{age}-year-old {sex}, lesion on the {localization}."
HAM_CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
MODALITIES = ("image", "text")  # what build() loads by default: image_dir and text_json are set
SITES = ["back", "upper extremity", "face"]


def write_image(path: Path, mode: str = "RGB", value: int | tuple[int, ...] = 128, size: int = 8) -> Path:
    """A tiny flat image; ``value`` is per mode (an int for "L"/"P", a tuple for "RGB"/"RGBA")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if mode == "RGB" and isinstance(value, int):
        value = (value, value // 2, 255 - value)
    Image.new(mode, (size, size), value).save(path)
    return path


def sample_rows(n: int = 24, labels: tuple[str, ...] = ("benign", "malignant")) -> list[dict[str, str]]:
    return [
        {"image_id": f"s{i:03d}", "label": labels[i % len(labels)], "site": SITES[i % 3], "age": str(30 + i)}
        for i in range(n)
    ]


def sample_text(row: dict[str, str], i: int) -> str:
    # Lengths vary (0-3 extra words) so that batches need padding.
    return f"{row['site']} lesion with a {row['label']} pattern" + " very" * (i % 4)


@dataclass
class Layout:
    root: Path
    csv_path: Path
    image_dir: Path
    json_path: Path
    rows: list[dict[str, str]]


def write_layout(
    root: Path,
    rows: list[dict[str, str]] | None = None,
    texts: dict[str, str] | None = None,
    image_ext: str = ".png",
    name: str = "samples",
) -> Layout:
    """``<name>.csv`` (columns from the row dicts), ``images/<id><ext>`` per row and ``<name>.json`` texts."""
    rows = sample_rows() if rows is None else rows
    root.mkdir(parents=True, exist_ok=True)
    csv_path = root / f"{name}.csv"
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    image_dir = root / "images"
    for i, row in enumerate(rows):
        write_image(image_dir / f"{row['image_id']}{image_ext}", value=(i * 37) % 256)
    json_path = root / f"{name}.json"
    texts = {row["image_id"]: sample_text(row, i) for i, row in enumerate(rows)} if texts is None else texts
    json_path.write_text(json.dumps(texts), encoding="utf-8")
    return Layout(root, csv_path, image_dir, json_path, rows)


def build(layout: Layout, **kwargs) -> MultimodalDataModule:
    """A small, deterministic module over ``layout``; ``kwargs`` override (``text_json=None`` drops the JSON)."""
    options = {
        "csv_path": str(layout.csv_path),
        "image_dir": str(layout.image_dir),
        "text_json": str(layout.json_path),
        "id_column": "image_id",
        "label_column": "label",
        "image_size": 16,
        "batch_size": 4,
        "augment": False,
        "seed": 0,
    }
    options.update(kwargs)
    return MultimodalDataModule(**options)


def data_error(make: Callable[[], object], *needles: str) -> str:
    """Run ``make``, expect a DataError whose message has every needle and a fix; return the message."""
    with pytest.raises(DataError) as info:
        make()
    message = str(info.value)
    for needle in (*needles, "Fix"):
        assert needle in message, f"{needle!r} not in the message:\n{message}"
    return message


def all_ids(dm: MultimodalDataModule, split: str) -> list[str]:
    return list(dm.datasets[split].ids)


def decoded_texts(dm: MultimodalDataModule) -> dict[str, str]:
    """id -> its tokenized text decoded back (lower-cased, WordPiece-spaced) for every split."""
    out = {}
    for name in ("train", "val", "test"):
        dataset = dm.datasets[name]
        for sample_id, ids in zip(dataset.ids, dataset.token_ids, strict=True):
            out[sample_id] = dm.tokenizer.decode(ids, skip_special_tokens=True)
    return out


def check_batch(batch: dict, names: Sequence[str], image_size: int, batch_size: int, all_present: bool = True) -> None:
    """The batch contract: ``id``, ``label``, ``present[name]`` and one input per modality name (``text``: ids and
    mask, ``tabular``: its three arrays, any other name an image); every input present unless ``all_present`` is
    False."""
    assert set(batch) == {"id", "label", "present", *names}
    size = len(batch["id"])
    assert 0 < size <= batch_size
    assert isinstance(batch["id"], list) and all(isinstance(i, str) for i in batch["id"])
    assert batch["label"].dtype == torch.long and batch["label"].shape == (size,)
    assert set(batch["present"]) == set(names)
    for name in names:
        present = batch["present"][name]
        assert present.dtype == torch.bool and present.shape == (size,), name
        assert present.all() or not all_present, name
        if name == "text":
            text = batch["text"]
            assert set(text) == {"input_ids", "attention_mask"}
            assert text["input_ids"].dtype == torch.long and text["input_ids"].ndim == 2
            assert text["input_ids"].shape[0] == size
            assert text["attention_mask"].dtype == torch.long
            assert text["attention_mask"].shape == text["input_ids"].shape
        elif name == "tabular":
            tabular = batch["tabular"]
            assert set(tabular) == {"numeric", "numeric_missing", "categorical"}
            assert tabular["numeric"].dtype == torch.float32 and tabular["numeric_missing"].dtype == torch.bool
            assert tabular["categorical"].dtype == torch.long
            assert all(t.shape[0] == size for t in tabular.values())
        else:
            assert batch[name].dtype == torch.float32, name
            assert batch[name].shape == (size, 3, image_size, image_size), name


def ham_datamodule(csv_path, image_dir=None, **kwargs) -> MultimodalDataModule:
    """HAM10000 as users configure it: extension-less image_id, dx labels, lesion-aware split, templated text."""
    options = {
        "id_column": "image_id",
        "label_column": "dx",
        "group_column": "lesion_id",
        "text_template": HAM_TEMPLATE,
    }
    return MultimodalDataModule(
        csv_path=str(csv_path), image_dir=None if image_dir is None else str(image_dir), **options | kwargs
    )


def ham_module(ham_layout) -> MultimodalDataModule:
    """The HAM10000 module the ``ham_dm`` fixtures set up: 32 px, batches of 8, seed 7, every image checked."""
    dm = ham_datamodule(
        ham_layout.csv_path, ham_layout.image_dir, image_size=32, batch_size=8, seed=7, verify_images=True
    )
    dm.setup()
    return dm


def ham_split_of(dm: MultimodalDataModule) -> dict[str, str]:
    return {i: split for split in ("train", "val", "test") for i in all_ids(dm, split)}
