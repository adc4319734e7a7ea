"""Streaming shards: every sample of every set round-trips exactly (images as the image cache decodes them, token
ids, tabular rows, presence, ids and labels), the classes, tokenizer and statistics come with them, batches and
training from shards equal those from the folder, and a shard that would unpickle is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_helpers import build, sample_rows, write_layout
from test_image_cache import textured

from medfusion.data import DataError, ShardDataModule
from medfusion.data.shards import META, pack, sets_to_pack

pytest.importorskip("litdata")
pytestmark = pytest.mark.usefixtures("one_thread")


def folder_module(tmp_path: Path, **kwargs):
    rows = sample_rows(30)
    for i, row in enumerate(rows):
        row["front"] = f"{row['image_id']}.png"
        row["side"] = "" if i % 4 == 0 else f"{row['image_id']}.png"
        row["age"] = "" if i % 5 == 0 else row["age"]
    layout = write_layout(tmp_path / "data", rows)
    for i, path in enumerate(sorted(layout.image_dir.glob("*.png"))):
        textured(path, (20 + i % 7, 15), seed=i)
    options = {
        "image_columns": {"front": "front", "side": "side"},
        "allow_missing": ["side"],
        "numeric_columns": ["age"],
        "categorical_columns": ["site"],
        "image_size": 16,
        "image_cache": str(tmp_path / "image_cache"),
        **kwargs,
    }
    return build(layout, **options)


def packed(tmp_path: Path, dm) -> Path:
    dm.setup(None)
    state, report = dm.state_dict(), dict(dm.data_report)
    return Path(pack(sets_to_pack(dm), tmp_path / "shards", dm.image_size, dm.max_length, state, report))


def same_sample(a: dict, b: dict) -> None:
    assert a["id"] == b["id"] and a["label"] == b["label"] and a["present"] == b["present"]
    for name, value in a.items():
        if name in ("id", "label", "present"):
            continue
        if isinstance(value, torch.Tensor):
            torch.testing.assert_close(value, b[name], rtol=0, atol=0)
        elif isinstance(value, dict):
            for key in value:
                np.testing.assert_array_equal(np.asarray(value[key]), np.asarray(b[name][key]))
        else:
            assert value == b[name], name


def test_every_sample_round_trips_exactly(tmp_path: Path) -> None:
    folder = folder_module(tmp_path, augment=False)
    shards = ShardDataModule(str(packed(tmp_path, folder)), augment=False, batch_size=4)
    shards.setup(None)
    assert (shards.class_names, shards.class_counts) == (folder.class_names, folder.class_counts)
    assert shards.modality_specs == folder.modality_specs and shards.vocab_size == folder.vocab_size
    assert json.dumps(shards.state_dict(), sort_keys=True) == json.dumps(folder.state_dict(), sort_keys=True)
    assert shards.test_sizes == folder.test_sizes
    for name in ("train", "val", "test"):
        a, b = folder.datasets[name], shards.datasets[name]
        assert len(a) == len(b) and a.ids == b.ids
        for i in range(len(a)):
            same_sample(a[i], b[i])
        assert {k: v for k, v in folder.data_report.items() if k.endswith(f"/{name}")} == {
            k: v for k, v in shards.data_report.items() if k.endswith(f"/{name}")
        }


def test_batches_with_augmentation_and_robustness_equal_the_folders(tmp_path: Path) -> None:
    folder = folder_module(tmp_path, augment=True, robustness=True)
    shards = ShardDataModule(str(packed(tmp_path, folder)), augment=True, robustness=True, batch_size=4)
    for dm in (folder, shards):
        dm.setup(None)
    torch.manual_seed(0)
    first = list(folder._loader(folder.datasets["train"], train=True))
    torch.manual_seed(0)
    second = list(shards._loader(shards.datasets["train"], train=True))
    for a, b in zip(first, second, strict=True):
        assert a["id"] == b["id"]
        torch.testing.assert_close(a["front"], b["front"], rtol=0, atol=0)  # the same random crops and flips
    assert shards.test_set_names == folder.test_set_names
    for name in ("test_no_side", "test_no_tabular"):
        loaders = folder._loader(folder.datasets[name], False), shards._loader(shards.datasets[name], False)
        for a, b in zip(*loaders, strict=True):
            assert torch.equal(a["present"]["side"], b["present"]["side"])
            assert torch.equal(a["present"]["tabular"], b["present"]["tabular"])


def test_a_shard_that_would_unpickle_is_refused(tmp_path: Path) -> None:
    out = packed(tmp_path, folder_module(tmp_path, augment=False))
    index = out / "val" / "index.json"
    spec = json.loads(index.read_text())
    spec["config"]["data_format"][0] = "pickle"
    index.write_text(json.dumps(spec))
    dm = ShardDataModule(str(out), augment=False)
    with pytest.raises(DataError, match="pickled fields"):
        dm.setup("validate")


def test_not_shards_or_another_format_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="holds no medfusion shards"):
        ShardDataModule(str(tmp_path))
    (tmp_path / META).write_text(json.dumps({"format": 99}))
    with pytest.raises(DataError, match="shard format 99"):
        ShardDataModule(str(tmp_path))


def test_pack_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "keep.txt").write_text("mine")
    with pytest.raises(Exception, match="not empty"):
        pack({}, tmp_path / "shards", 16, 128, {}, {})
