"""The set-up cache: a second datamodule over unchanged inputs loads what the first read (the same records, splits,
classes, tabular statistics, tokenizer and counts) without reading, its warnings shown again; any change to an
option, a file or an image folder reads again; under DDP the second rank loads what rank zero read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_helpers import build, sample_rows, write_image, write_layout

import medfusion.data.reader as reader_module
from medfusion.data import DataError, MultimodalDataModule

pytestmark = pytest.mark.usefixtures("one_thread")


def tabular_layout(tmp_path: Path):
    rows = sample_rows(30)
    for i, row in enumerate(rows):
        row["age"] = "" if i % 7 == 0 else str(20 + i)
    return write_layout(tmp_path / "data", rows)


def options(tmp_path: Path) -> dict:
    return {"numeric_columns": ["age"], "categorical_columns": ["site"], "cache_dir": str(tmp_path / "cache")}


def snapshot(dm: MultimodalDataModule) -> dict:
    """Everything set-up gives, as plain values."""
    dm.setup(None)
    out = {
        "classes": (dm.class_names, dm.class_counts, dm.vocab_size, dm.modality_specs),
        "state": json.dumps(dm.state_dict(), sort_keys=True, default=str),
        "report": dm.data_report,
        "tests": dm.test_set_names,
    }
    for name, dataset in dm.datasets.items():
        out[name] = [
            dataset.ids,
            dataset.labels,
            {m: list(map(str, paths)) for m, paths in dataset.images.items()},
            list(dataset.token_ids) if dataset.token_ids is not None else None,
            dataset.tabular.numeric.tolist() if dataset.tabular is not None else None,
            dataset.tabular.categorical.tolist() if dataset.tabular is not None else None,
        ]
    return out


def refuse_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reader_module, "read_training", lambda *a, **k: pytest.fail("read the CSV again"))


def test_a_second_build_loads_what_the_first_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = tabular_layout(tmp_path)
    first = build(layout, **options(tmp_path))
    assert not first.read_from_cache
    expected = snapshot(first)
    refuse_reading(monkeypatch)
    second = build(layout, **options(tmp_path))
    assert second.read_from_cache
    assert snapshot(second) == expected
    entries = list((tmp_path / "cache" / "setup").iterdir())
    assert len(entries) == 1 and entries[0].suffix == ".json"
    json.loads(entries[0].read_text())  # plain JSON: nothing in it can run code


def test_warnings_of_the_reading_are_shown_again_on_a_load(tmp_path: Path) -> None:
    rows = [*sample_rows(24), {"image_id": "r000", "label": "rare", "site": "back", "age": "40"}]
    layout = write_layout(tmp_path / "data", rows)
    for _ in range(2):
        with pytest.warns(UserWarning, match="'rare'"):
            build(layout, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("change", ["option", "csv", "new image", "json"])
def test_any_change_reads_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:
    layout = tabular_layout(tmp_path)
    write_image(layout.image_dir / "sub" / "other.png")
    build(layout, **options(tmp_path))
    kwargs = options(tmp_path)
    if change == "option":
        kwargs["seed"] = 1
    elif change == "csv":
        text = layout.csv_path.read_text()
        layout.csv_path.write_text(text.replace("benign", "benign ", 1))
    elif change == "new image":
        write_image(layout.image_dir / "sub" / "extra.png")  # only the subfolder's modification time changes
    else:
        texts = json.loads(layout.json_path.read_text())
        layout.json_path.write_text(json.dumps({**texts, "s000": "a new text"}))
    reads = []
    real = reader_module.read_training
    monkeypatch.setattr(reader_module, "read_training", lambda *a, **k: reads.append(1) or real(*a, **k))
    assert not build(layout, **kwargs).read_from_cache
    assert reads == [1]


def test_an_image_that_makes_an_id_ambiguous_is_seen(tmp_path: Path) -> None:
    layout = tabular_layout(tmp_path)
    build(layout, **options(tmp_path))
    write_image(layout.image_dir / "s001.jpg")  # next to s001.png: the id "s001" now names two files
    with pytest.raises(DataError, match="Ambiguous image ids"):
        build(layout, **options(tmp_path))


def test_an_unreadable_entry_is_read_again(tmp_path: Path) -> None:
    layout = tabular_layout(tmp_path)
    expected = snapshot(build(layout, **options(tmp_path)))
    (entry,) = (tmp_path / "cache" / "setup").iterdir()
    entry.write_text('{"format": 1, "table": ')
    with pytest.warns(UserWarning, match="unreadable set-up cache entry"):
        again = build(layout, **options(tmp_path))
    assert not again.read_from_cache and snapshot(again) == expected


def test_cache_false_stores_nothing(tmp_path: Path) -> None:
    layout = tabular_layout(tmp_path)
    assert not build(layout, **options(tmp_path), cache=False).read_from_cache
    assert not (tmp_path / "cache").exists()


DDP_SCRIPT = """
import json, sys, hashlib
import lightning as L, torch
from medfusion.data import DataError, MultimodalDataModule

out, csv_path, image_dir, text_json, cache_dir = sys.argv[1:6]
dm = MultimodalDataModule(csv_path=csv_path, image_dir=image_dir, text_json=text_json, image_size=16, batch_size=4,
                          augment=False, numeric_columns=["age"], categorical_columns=["site"], cache_dir=cache_dir)


class Probe(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def on_fit_start(self):
        data = self.trainer.datamodule
        digest = hashlib.sha256()
        for name in ("train", "val"):
            dataset = data.datasets[name]
            digest.update(json.dumps([dataset.ids, dataset.labels, list(dataset.token_ids),
                                      dataset.tabular.numeric.tolist()]).encode())
        mine = {"rank": self.global_rank, "cache": data.read_from_cache, "digest": digest.hexdigest()}
        everyone = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(everyone, mine)
        if self.global_rank == 0:
            open(out, "w").write(json.dumps(everyone))

    def training_step(self, batch, index):
        return self.layer(batch["label"].float()[:, None]).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


trainer = L.Trainer(strategy="ddp", accelerator="cpu", devices=2, max_steps=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=cache_dir)
trainer.fit(Probe(), datamodule=dm)
"""


@pytest.mark.slow
def test_ddp_ranks_get_the_identical_data_read_once(tmp_path: Path) -> None:
    layout = tabular_layout(tmp_path)
    script = tmp_path / "ddp_probe.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ranks.json"
    args = [str(out), str(layout.csv_path), str(layout.image_dir), str(layout.json_path), str(tmp_path / "cache")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDFUSION_PROGRESS": "off"}
    result = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = sorted(json.loads(out.read_text()), key=lambda r: r["rank"])
    assert [r["cache"] for r in ranks] == [False, True]  # rank zero read; rank one loaded what it read
    assert ranks[0]["digest"] == ranks[1]["digest"]
