"""Shards streamed as LitData streams them (``order="stream"``): every training sample once per epoch, and a run
resumed from a mid-epoch checkpoint reads exactly what the epoch had left; shards on an object store (an S3
emulator) pack, read and stream like local ones."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from killpoint import FailAt
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from test_cli import CONFIGS, small_run_args
from test_shards import folder_module, packed, same_sample

from medfusion.cli import configured, main
from medfusion.data import ConfigError, ShardDataModule
from medfusion.data.shards import pack, sets_to_pack
from medfusion.models import ClassifierModule

pytest.importorskip("litdata")
pytestmark = pytest.mark.usefixtures("one_thread")


class RecordIds(Callback):
    """The sample ids of every training batch, by global step."""

    def __init__(self) -> None:
        self.ids: dict[int, list[str]] = {}

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: dict, *args) -> None:
        self.ids[trainer.global_step + 1] = list(batch["id"])


def fit(args: list[str], callbacks: list[Callback], ckpt_path: str | None = None) -> None:
    cli = configured(ClassifierModule, args)
    options = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False, "max_epochs": 2}
    trainer = L.Trainer(callbacks=callbacks, num_sanity_val_steps=0, **options)
    trainer.fit(cli.model, cli.datamodule, ckpt_path=ckpt_path)


def test_stream_order_resumes_mid_epoch_with_exactly_the_samples_the_epoch_had_left(tmp_path: Path) -> None:
    args = ["--config", str(CONFIGS / "demo.yaml"), *small_run_args(tmp_path)]
    main(["pack", *args, f"--out={tmp_path / 'shards'}"])
    streamed = [*args, "--data=medfusion.data.ShardDataModule", f"--data.shards={tmp_path / 'shards'}"]
    streamed += ["--data.order=stream", "--trainer.max_epochs=2"]
    reference = RecordIds()
    fit(streamed, [reference])
    train_ids = ShardDataModule(str(tmp_path / "shards"))._sets["train"]["ids"]
    steps_per_epoch = len(train_ids) // 16  # the last partial batch is dropped
    for epoch in range(2):
        seen = [i for step in range(1, steps_per_epoch + 1) for i in reference.ids[epoch * steps_per_epoch + step]]
        assert len(seen) == len(set(seen)) == steps_per_epoch * 16 and set(seen) <= set(train_ids)
    first, second = (reference.ids[s] for s in (1, steps_per_epoch + 1))
    assert first != second  # each epoch its own shuffle

    stopped, resumed = RecordIds(), RecordIds()
    checkpoints = ModelCheckpoint(tmp_path / "ckpt", filename="{step}", every_n_train_steps=3, save_top_k=-1)
    with pytest.raises(RuntimeError, match="stopped at step 5"):
        fit(streamed, [stopped, checkpoints, FailAt(5)])
    fit(streamed, [resumed], ckpt_path=str(tmp_path / "ckpt" / "step=3.ckpt"))  # 3 of the first epoch's batches
    assert {s: stopped.ids[s] for s in range(1, 6)} == {s: reference.ids[s] for s in range(1, 6)}
    assert resumed.ids == {s: ids for s, ids in reference.ids.items() if s > 3}


def test_stream_order_refuses_the_balanced_sampler_and_shards_refuse_an_unknown_scheme(tmp_path: Path) -> None:
    out = packed(tmp_path, folder_module(tmp_path, augment=False))
    with pytest.raises(ConfigError, match="needs order='exact'"):
        ShardDataModule(str(out), order="stream", sampler="balanced")
    with pytest.raises(ConfigError, match="streams local folders and s3://"):
        ShardDataModule("https://example.org/shards")


@pytest.fixture
def s3_bucket(monkeypatch: pytest.MonkeyPatch):
    """A bucket on a local S3 emulator (moto), reached through the environment as a user's store would be."""
    server_module = pytest.importorskip("moto.server")
    import boto3
    import litdata.streaming.downloader as downloader

    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}
    for key, value in {**env, "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    # The emulator speaks plain HTTP, which LitData's async client refuses unless told (a real store is HTTPS).
    monkeypatch.setattr(
        downloader, "_OBSTORE_CLIENT_OPTIONS", {**downloader._OBSTORE_CLIENT_OPTIONS, "allow_http": True}
    )
    boto3.client("s3").create_bucket(Bucket="medfusion-test")
    yield "s3://medfusion-test"
    server.stop()


def test_shards_on_an_object_store_read_and_stream_like_local_ones(tmp_path: Path, s3_bucket: str) -> None:
    folder = folder_module(tmp_path, augment=False)
    folder.setup(None)
    url = f"{s3_bucket}/study/shards/"
    written = pack(sets_to_pack(folder), url, folder.image_size, folder.max_length, folder.state_dict(), {})
    assert written == f"{s3_bucket}/study/shards"
    with pytest.raises(ConfigError, match="not empty"):
        pack({}, url, 16, 128, {}, {})
    remote = ShardDataModule(url, augment=False, batch_size=4, cache_dir=str(tmp_path / "downloads"))
    remote.setup(None)
    assert remote.class_names == folder.class_names and remote.vocab_size == folder.vocab_size
    for name in ("train", "val", "test"):
        a, b = folder.datasets[name], remote.datasets[name]
        assert a.ids == b.ids
        for i in range(len(a)):
            same_sample(a[i], b[i])
    assert any((tmp_path / "downloads" / "shards").rglob("index.json"))  # streamed through the named cache

    streamed = ShardDataModule(url, augment=False, batch_size=4, order="stream", cache_dir=str(tmp_path / "more"))
    streamed.setup("fit")
    loader = streamed.train_dataloader()
    epochs = [[i for batch in loader for i in batch["id"]] for _ in range(2)]
    for ids in epochs:
        assert len(ids) == len(set(ids)) == len(folder.datasets["train"]) // 4 * 4
    assert epochs[0] != epochs[1]
    assert torch.is_tensor(next(iter(loader))["front"])
