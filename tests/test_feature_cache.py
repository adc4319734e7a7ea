"""The feature cache: bit-identical to a fresh encoder pass, invalidated by any change of encoder or data, and a
fit on cached features equals a fit on images and texts."""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import medfusion.models.feature_cache as feature_cache
from medfusion.data import DemoDataModule
from medfusion.encoders import ImageEncoder, TextEncoder, encode_present
from medfusion.fusion import ConcatFusion, CrossAttentionFusion, HierarchicalFusion
from medfusion.models import MultimodalClassifier
from medfusion.models.feature_cache import CachedFeatures, as_batch, cached_features

FUSIONS = {"pooled": ConcatFusion, "tokens": CrossAttentionFusion, "levels": HierarchicalFusion}


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    DemoDataModule(root=str(root), num_samples=80, demo_image_size=32, image_size=32)  # writes the files
    return root


def datamodule(root: Path, cache: Path, **kwargs) -> DemoDataModule:
    options = {"num_samples": 80, "demo_image_size": 32, "image_size": 32, "batch_size": 16, "augment": False}
    dm = DemoDataModule(root=str(root), feature_cache=str(cache), **{**options, **kwargs})
    dm.setup("fit")
    return dm


def model(dm: DemoDataModule, fusion=ConcatFusion, seed: int = 0, **kwargs) -> MultimodalClassifier:
    torch.manual_seed(seed)
    options = {
        "image_encoder": partial(ImageEncoder, "test_resnet"),
        "text_encoder": partial(TextEncoder, "tiny"),
        "fusion_dim": 32,
        "freeze_encoders": True,
        **kwargs,
    }
    data = {"modalities": dm.modality_specs, "class_names": dm.class_names, "class_counts": dm.class_counts}
    return MultimodalClassifier(fusion=fusion, num_classes=dm.num_classes, **data, **options)


@pytest.mark.parametrize("kind", FUSIONS)
def test_cached_features_are_bit_identical_to_a_fresh_encoder_pass(kind: str, demo_root: Path, tmp_path: Path) -> None:
    dm = datamodule(demo_root, tmp_path)
    net = model(dm, FUSIONS[kind]).eval()
    cached = cached_features(net, dm, "train")
    assert isinstance(cached, CachedFeatures)
    fields = net.feature_fields()
    loader = DataLoader(dm.datasets["train"], batch_size=dm.batch_size, collate_fn=dm.collate)
    start, compared = 0, 0
    with torch.inference_mode():
        for batch in loader:
            size = len(batch["id"])
            from_cache = cached.__getitems__(list(range(start, start + size)))
            assert from_cache["id"] == batch["id"]
            assert torch.equal(from_cache["label"], batch["label"])
            for modality in ("image", "text"):
                encoder = net.feature_encoders()[modality]
                fresh = encode_present(encoder, batch[modality], batch["present"][modality], **fields)
                stored = from_cache["features"][modality]
                assert torch.equal(stored["pooled"], fresh.pooled)
                if kind == "tokens":
                    assert torch.equal(stored["tokens"], fresh.tokens)
                    assert torch.equal(stored["mask"], fresh.mask)
                if kind == "levels":
                    assert len(stored["levels"]) == len(fresh.levels) == 3
                    assert all(torch.equal(a, b) for a, b in zip(stored["levels"], fresh.levels, strict=True))
                compared += 1
            start += size
    assert start == len(dm.datasets["train"]) and compared == 2 * len(loader)


def entries(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if not p.name.startswith(".")}


def test_changing_the_encoder_or_the_data_invalidates_the_cache(demo_root: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    dm = datamodule(demo_root, cache)
    first = cached_features(model(dm), dm, "val").stores
    assert all(store.computed for store in first.values())
    assert entries(cache) == {first["image"].path.name, first["text"].path.name}

    again = cached_features(model(dm), dm, "val").stores  # same weights, same data: read back, not recomputed
    assert {m: (s.path, s.computed) for m, s in again.items()} == {m: (s.path, False) for m, s in first.items()}

    def new_entries(stores: dict) -> dict[str, bool]:
        return {m: s.path != first[m].path and s.computed for m, s in stores.items()}

    # other weights (another seed): both encoders are new
    assert new_entries(cached_features(model(dm, seed=1), dm, "val").stores) == {"image": True, "text": True}
    # other settings of one encoder: only its entry changes
    mean_pooled = model(dm, text_encoder=partial(TextEncoder, "tiny", pooling="mean"))
    assert new_entries(cached_features(mean_pooled, dm, "val").stores) == {"image": False, "text": True}
    # what the fusion needs (tokens instead of pooled) is part of the key
    assert new_entries(cached_features(model(dm, CrossAttentionFusion), dm, "val").stores) == {
        "image": True,
        "text": True,
    }

    # an image file rewritten with other pixels
    image = Path(dm.datasets["val"].images["image"][0])
    stat = image.stat()
    Image.new("RGB", (32, 32), (0, 255, 0)).save(image)
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert new_entries(cached_features(model(dm), datamodule(demo_root, cache), "val").stores) == {
        "image": True,
        "text": False,
    }

    # a report edited in the JSON of texts
    reports = demo_root / "reports.json"
    texts = json.loads(reports.read_text())
    texts[dm.datasets["val"].ids[0]] = "a completely different report about a benign naevus"
    reports.write_text(json.dumps(texts))
    assert new_entries(cached_features(model(dm), datamodule(demo_root, cache), "val").stores) == {
        "image": False,
        "text": True,
    }


def fit(dm: DemoDataModule, **kwargs) -> tuple[MultimodalClassifier, dict[str, float]]:
    L.seed_everything(0)
    net = model(dm, **kwargs)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(net, dm)
    return net, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_a_fit_on_cached_features_equals_a_fit_on_the_inputs(demo_root: Path, tmp_path: Path) -> None:
    plain_dm = DemoDataModule(
        root=str(demo_root), num_samples=80, demo_image_size=32, image_size=32, batch_size=16, augment=False
    )
    plain, plain_metrics = fit(plain_dm, modality_dropout=0.2)
    untrained = model(plain_dm)
    for name, value in untrained.encoders["image"].state_dict().items():  # frozen: BatchNorm statistics too
        assert torch.equal(plain.encoders["image"].state_dict()[name], value), name
    cached, cached_metrics = fit(datamodule(demo_root, tmp_path), modality_dropout=0.2)
    assert entries(tmp_path) and plain_metrics.keys() == cached_metrics.keys()
    for name, value in plain_metrics.items():
        assert cached_metrics[name] == pytest.approx(value, abs=1e-4), name
    for (name, a), b in zip(plain.state_dict().items(), cached.state_dict().values(), strict=True):
        assert torch.allclose(a.float(), b.float(), atol=1e-4), name


def test_what_caching_excludes_is_refused_with_the_fix(demo_root: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"data\.augment: false"):
        DemoDataModule(root=str(demo_root), num_samples=80, demo_image_size=32, feature_cache=str(tmp_path))
    dm = datamodule(demo_root, tmp_path)
    with pytest.raises(ValueError, match=r"model\.freeze_encoders: true"):
        cached_features(model(dm, freeze_encoders=False), dm, "train")
    with pytest.raises(ValueError, match="tta"):
        cached_features(model(dm, tta=["identity", "hflip"]), dm, "train")
    with pytest.raises(RuntimeError, match="inside a Trainer"):
        dm.train_dataloader()
    # in a Trainer the model refuses in its setup, before any loader is built
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"model\.freeze_encoders: true"):
        trainer.fit(model(dm, freeze_encoders=False), dm)


def test_the_datamodule_serves_what_the_hook_returns_read_as_the_dataset_declares(
    demo_root: Path, tmp_path: Path
) -> None:
    dm = datamodule(demo_root, tmp_path, num_workers=2)
    net = model(dm)
    dm.use_datasets(feature_cache.serve_cached_features(net, dm))
    loader = dm.val_dataloader()
    assert isinstance(loader.dataset, CachedFeatures)
    assert loader.collate_fn is as_batch and loader.num_workers == 0 and not loader.persistent_workers
    batch = next(iter(loader))
    assert set(batch["features"]) == {"image", "text"} and batch["id"] == dm.datasets["val"].ids[: dm.batch_size]
    dm.use_datasets(None)  # no hook: the cache needs a model again
    with pytest.raises(RuntimeError, match="inside a Trainer"):
        dm.val_dataloader()

    plain = DemoDataModule(root=str(demo_root), num_samples=80, demo_image_size=32, image_size=32, num_workers=2)
    plain.setup("fit")
    plain.use_datasets(lambda name, dataset: dataset)  # a dataset declaring nothing: the datamodule's own loading
    loader = plain.val_dataloader()
    assert loader.collate_fn is not as_batch and loader.num_workers == 2


class FakeStrategy:
    def __init__(self, rank: int, events: list) -> None:
        self.is_global_zero, self.events = rank == 0, events

    def barrier(self, name: str) -> None:
        self.events.append(("barrier", name))


def test_under_ddp_rank_zero_computes_while_the_other_ranks_wait(demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    events: list = []
    real = feature_cache.load_or_build

    def recorded(root, encoder, modality, dataset, **build):
        store = real(root, encoder, modality, dataset, **build)
        events.append((modality, "computed" if store.computed else "read"))
        return store

    monkeypatch.setattr(feature_cache, "load_or_build", recorded)
    dm = datamodule(demo_root, tmp_path)
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(strategy=FakeStrategy(rank, events))
        cached_features(model(dm), dm, "val")
    wait = ("barrier", "feature_cache")
    assert events == [
        *[("image", "computed"), wait, ("text", "computed"), wait],  # rank 0 writes each entry, then releases
        *[wait, ("image", "read"), wait, ("text", "read")],  # the others wait for it, then read it
    ]
