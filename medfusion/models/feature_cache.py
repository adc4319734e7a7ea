"""The feature cache: frozen encoders' outputs computed once per split and reused by every epoch and run.

With frozen encoders each epoch of each run recomputes the same features, which is most of the cost of a fusion
study. With ``data.feature_cache: DIR`` (``MultimodalDataModule(feature_cache=DIR)``) and
``model.freeze_encoders: true``, the model's ``setup`` installs :func:`serve_cached_features` as the datamodule's
dataset hook (``MultimodalDataModule.use_datasets``): each split's features are computed once into
``DIR/<modality>-<key>/`` (one ``.npy`` per field, memory-mapped when read) and the loaders then yield batches of
features, so training runs the fusion and head only. The datamodule only holds the directory and the hook; this
module, which runs the encoders over the data, is driven from the model. The key hashes everything the features
depend on: the encoder (class, settings, architecture and weights), the fields the fusion needs (pooled, tokens,
levels), the model input (the image transform; the token ids, hence the tokenizer, texts and ``max_length``), the
data (ids, each image file's path, size and modification time) and the device type. Any change gives a new key,
so a stale entry is never read; old entries stay on disk until you delete the directory.

Outside a Trainer (tests, benchmarks) :func:`cached_features` gives a split's cached features directly.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medfusion.data.dataset import Collate, MultimodalDataset
from medfusion.data.errors import DataError
from medfusion.encoders import Encoded, encode_present
from medfusion.runs.progress import track

if TYPE_CHECKING:
    from medfusion.data.datamodule import MultimodalDataModule
    from medfusion.models.base import ClassifierModule

FORMAT_VERSION = 2


def weights_digest(module: nn.Module) -> str:
    """A hash of a module's parameters and buffers (names, dtypes, shapes and bytes)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy())
    return digest.hexdigest()


def encoder_settings(encoder: nn.Module) -> dict[str, Any]:
    """The encoder's plain settings (model name, pooling, levels ...) and a hash of its architecture."""
    settings = {
        key: value
        for key, value in vars(encoder).items()
        if not key.startswith("_") and isinstance(value, (bool, int, float, str, list, tuple, type(None)))
    }
    architecture = hashlib.blake2b(repr(encoder).encode(), digest_size=16).hexdigest()
    name = f"{type(encoder).__module__}.{type(encoder).__qualname__}"
    return {"class": name, "architecture": architecture, **settings}


def input_digest(dataset: MultimodalDataset, modality: str) -> str:
    """A hash of what the encoder of ``modality`` (a name) reads from ``dataset``: per sample its image file (path,
    size, modification time) and the transform, its token ids, or its tabular inputs and presence."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(json.dumps(dataset.ids).encode())
    if modality in dataset.images:
        digest.update(repr(dataset.transform).encode())
        if modality in getattr(dataset, "crops", {}):
            digest.update(dataset.crops[modality].digest().encode())
        for stack in getattr(dataset, "stacks", {}).get(modality, []):
            for path in stack or ():
                stat = os.stat(path)
                digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
        for path in dataset.images[modality]:
            stat = os.stat(path) if path is not None else None
            digest.update(f"{path}|{stat and stat.st_size}|{stat and stat.st_mtime_ns}\n".encode())
    elif modality == "text":
        token_ids = dataset.token_ids
        ids = token_ids.digest() if hasattr(token_ids, "digest") else json.dumps(list(token_ids))
        digest.update(ids.encode())
    else:
        for array in (dataset.tabular.numeric, dataset.tabular.numeric_missing, dataset.tabular.categorical):
            digest.update(np.ascontiguousarray(array).tobytes())
        digest.update(json.dumps(dataset.tabular_present).encode())
    return digest.hexdigest()


def cache_key(
    encoder: nn.Module, modality: str, dataset: MultimodalDataset, fields: dict[str, bool], device: torch.device
) -> str:
    """The cache entry's name: ``<modality>-<hash>`` of the encoder, the fields, the inputs and the device type."""
    parts = {
        "version": FORMAT_VERSION,
        "modality": modality,
        "encoder": encoder_settings(encoder),
        "weights": weights_digest(encoder),
        "fields": fields,
        "inputs": input_digest(dataset, modality),
        "device": torch.device(device).type,
    }
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return f"{modality}-{hashlib.blake2b(blob, digest_size=12).hexdigest()}"


@dataclass
class FeatureStore:
    """One cache entry: an encoder's outputs for every sample of a dataset, as memory-mapped arrays.

    ``arrays`` holds ``pooled`` ``[N, D]``, ``present`` bool ``[N]`` and, when the fusion needs them, ``tokens``
    ``[N, T, D]`` with ``mask`` bool ``[N, T]`` (padded to the longest sample) and ``level<k>`` ``[N, D_k]``.
    Absent samples hold zeros (mask False); the model puts its learned stand-ins there.
    """

    path: Path
    ids: list[str]
    arrays: dict[str, np.ndarray]
    computed: bool = False  # True when this process just computed it (else read from disk)

    @classmethod
    def open(cls, path: Path) -> FeatureStore:
        meta = json.loads((path / "meta.json").read_text())
        arrays = {name: np.load(path / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}
        return cls(path, meta["ids"], arrays)

    def encoded(self, rows: np.ndarray) -> dict[str, Any]:
        """The fields of these rows as tensors, keyed like :class:`~medfusion.encoders.Encoded` (token padding
        trimmed to the longest real sequence among them)."""
        take = {
            name: torch.from_numpy(np.ascontiguousarray(array[rows]))
            for name, array in self.arrays.items()
            if name != "present"  # read by the dataset, once
        }
        out: dict[str, Any] = {"pooled": take["pooled"]}
        if "tokens" in take:
            real = take["mask"].any(0).nonzero()
            length = int(real.max()) + 1 if len(real) else 1
            out["tokens"], out["mask"] = take["tokens"][:, :length], take["mask"][:, :length]
        levels = sorted((name for name in take if name.startswith("level")), key=lambda n: int(n[5:]))
        if levels:
            out["levels"] = [take[name] for name in levels]
        return out


def build_store(
    path: Path,
    encoder: nn.Module,
    modality: str,
    dataset: MultimodalDataset,
    collate: Collate,
    fields: dict[str, bool],
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
) -> FeatureStore:
    """Encode every sample of ``dataset`` (in order, encoder in eval mode, no gradients) into a new entry at
    ``path``, written to a temporary directory first and renamed, so a crash leaves no half-written entry."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers, collate_fn=collate)
    staging = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    staging.mkdir(parents=True)
    writer = _StoreWriter(staging, len(dataset), _max_tokens(dataset, modality, collate))
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.inference_mode():
            start = 0
            description = f"caching {modality} features of {len(dataset):,} samples"
            for batch in track(loader, description=description, total=len(dataset), unit="samples", size=_samples):
                if int(batch.get("replaced", 0)):
                    raise DataError(
                        f"An image in {dataset.csv_path} failed to load while caching features; a cache must not hold "
                        "another sample's features. Fix the file (the warning names it) or drop data.feature_cache."
                    )
                present = batch["present"][modality]
                inputs = batch[modality]
                inputs = {k: v.to(device) for k, v in inputs.items()} if isinstance(inputs, dict) else inputs.to(device)
                encoded = encode_present(encoder, inputs, present.to(device), **fields)
                writer.write(start, present, encoded)
                start += len(present)
        writer.close(dataset.ids, _placeholder_dims(encoder, fields))
        try:
            staging.rename(path)
        except OSError:  # another process (a DDP rank, a parallel run) wrote the same entry first
            shutil.rmtree(staging, ignore_errors=True)
    finally:
        encoder.train(was_training)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    store = FeatureStore.open(path)
    store.computed = True
    return store


def _samples(batch: dict[str, Any]) -> int:
    return len(batch["label"])


def _max_tokens(dataset: MultimodalDataset, modality: str, collate: Collate) -> int | None:
    """The padded token length of a text cache: the longest text of the split (or its placeholder)."""
    if modality != "text":
        return None
    placeholder = len(collate.missing_text_ids or (collate.pad_token_id,))
    return max([placeholder, *(len(t) for t in dataset.token_ids if t is not None)])


def _placeholder_dims(encoder: nn.Module, fields: dict[str, bool]) -> dict[str, Any]:
    """Field sizes for a split in which no sample has the modality (the encoder never ran)."""
    dims: dict[str, Any] = {"pooled": encoder.out_dim}
    if fields.get("tokens"):
        dims["tokens"] = encoder.token_dim
    if fields.get("levels"):
        dims["levels"] = encoder.level_dims
    return dims


class _StoreWriter:
    """Writes batches of encoder outputs into ``.npy`` files opened as memory maps on the first real batch."""

    def __init__(self, path: Path, size: int, max_tokens: int | None) -> None:
        self.path, self.size, self.max_tokens = path, size, max_tokens
        self.arrays: dict[str, np.ndarray] = {}
        self.present = np.zeros(size, dtype=bool)

    def _open(self, name: str, shape: Sequence[int], dtype: Any) -> np.ndarray:
        if name not in self.arrays:
            self.arrays[name] = np.lib.format.open_memmap(
                self.path / f"{name}.npy", mode="w+", dtype=dtype, shape=(self.size, *shape)
            )
        return self.arrays[name]

    def write(self, start: int, present: torch.Tensor, encoded: Encoded | None) -> None:
        stop = start + len(present)
        self.present[start:stop] = present.numpy()
        if encoded is None:  # the files start as zeros
            return
        pooled = encoded.pooled.float().cpu().numpy()
        self._open("pooled", pooled.shape[1:], np.float32)[start:stop] = pooled
        if encoded.tokens is not None:
            tokens, mask = encoded.tokens.float().cpu().numpy(), encoded.mask.cpu().numpy()
            length = self.max_tokens or tokens.shape[1]
            self._open("tokens", (length, tokens.shape[2]), np.float32)[start:stop, : tokens.shape[1]] = tokens
            self._open("mask", (length,), bool)[start:stop, : mask.shape[1]] = mask
        for k, level in enumerate(encoded.levels or []):
            values = level.float().cpu().numpy()
            self._open(f"level{k}", values.shape[1:], np.float32)[start:stop] = values

    def close(self, ids: list[str], dims: dict[str, Any]) -> None:
        """Create the fields no batch filled (no sample had the modality), flush, and write ``meta.json``."""
        self._open("pooled", (dims["pooled"],), np.float32)
        if "tokens" in dims:
            self._open("tokens", (self.max_tokens or 1, dims["tokens"]), np.float32)
            self._open("mask", (self.max_tokens or 1,), bool)
        for k, dim in enumerate(dims.get("levels", [])):
            self._open(f"level{k}", (dim,), np.float32)
        np.save(self.path / "present.npy", self.present)
        for array in self.arrays.values():
            array.flush()
        names = [*self.arrays, "present"]
        (self.path / "meta.json").write_text(json.dumps({"version": FORMAT_VERSION, "ids": ids, "arrays": names}))


def load_or_build(
    root: str | Path, encoder: nn.Module, modality: str, dataset: MultimodalDataset, **build: Any
) -> FeatureStore:
    """The entry for this encoder and data under ``root``: opened when it exists, else computed (``build`` holds
    :func:`build_store`'s ``collate``, ``fields``, ``device``, ``batch_size`` and ``num_workers``)."""
    path = Path(root).expanduser() / cache_key(encoder, modality, dataset, build["fields"], build["device"])
    if (path / "meta.json").is_file():
        return FeatureStore.open(path)
    return build_store(path, encoder, modality, dataset, **build)


def as_batch(batch: dict[str, Any]) -> dict[str, Any]:
    """The collate function of :class:`CachedFeatures` loaders: its ``__getitems__`` already returns a batch."""
    return batch


class CachedFeatures(Dataset):
    """A split as batches of cached features: ``id``, ``label``, ``present`` (``{modality: bool [B]}``) and
    ``features`` (``{modality: {"pooled", "tokens", "mask", "levels"}}``), read straight from the memory maps a
    whole batch at a time (``__getitems__``); use it with ``collate_fn=as_batch``. It declares how the
    datamodule's loaders read it (see ``MultimodalDataModule.use_datasets``): with :func:`as_batch` and in the main
    process (memory maps, read a batch at a time: no workers needed)."""

    collate_fn = staticmethod(as_batch)
    main_process_only = True

    def __init__(self, ids: Sequence[str], labels: Sequence[int], stores: dict[str, FeatureStore]) -> None:
        for modality, store in stores.items():
            if store.ids != list(ids):
                raise DataError(f"The {modality} feature cache {store.path} holds other samples: delete it and rerun")
        self.ids, self.labels, self.stores = list(ids), torch.as_tensor(labels, dtype=torch.long), stores

    def __len__(self) -> int:
        return len(self.ids)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Any]:
        rows = np.asarray(indices, dtype=np.int64)
        batch: dict[str, Any] = {"id": [self.ids[i] for i in rows], "label": self.labels[rows], "features": {}}
        batch["present"] = {}
        for modality, store in self.stores.items():
            batch["present"][modality] = torch.from_numpy(np.asarray(store.arrays["present"][rows]))
            batch["features"][modality] = store.encoded(rows)
        return batch

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.__getitems__([index])


def check_cacheable(model: ClassifierModule) -> None:
    """Refuse what caching excludes, naming the fix: trained encoders (their features change every step) and
    test-time augmentation (it needs the images)."""
    if not model.hparams.get("freeze_encoders"):
        raise ValueError(
            "data.feature_cache needs frozen encoders (trained ones change their features every step). "
            "Fix: set model.freeze_encoders: true, or drop data.feature_cache."
        )
    if model.tta:
        raise ValueError("Test-time augmentation (model.tta) needs the images, which data.feature_cache skips")
    if getattr(model, "saliency_options", None) is not None:
        raise ValueError(
            "model.saliency_crop cuts its crop where the trained CAM points, so its features cannot be cached. "
            "Fix: drop data.feature_cache, or crop from boxes or masks (data.crops)."
        )


def cached_features(model: ClassifierModule, datamodule: MultimodalDataModule, name: str) -> CachedFeatures:
    """The features of ``datamodule.datasets[name]`` (after ``datamodule.setup``) by ``model``'s frozen encoders,
    from ``datamodule.feature_cache``: computed and stored on first use, with the datamodule's collate, batch size
    and workers; under DDP (a datamodule attached to a Trainer) rank 0 computes while the others wait. Inside a
    Trainer the loaders get them through :func:`serve_cached_features`; call this directly without one."""
    return _cached(model, datamodule, name, datamodule.datasets[name])


def serve_cached_features(
    model: ClassifierModule, datamodule: MultimodalDataModule
) -> Callable[[str, Dataset], CachedFeatures]:
    """The dataset hook for ``datamodule.use_datasets``: serves each split as its :func:`cached_features` by
    ``model`` (refusing, like :func:`check_cacheable`, a model whose features cannot be cached)."""
    check_cacheable(model)

    def serve(name: str, dataset: Dataset) -> CachedFeatures:
        return _cached(model, datamodule, name, dataset)

    return serve


def _cached(
    model: ClassifierModule, datamodule: MultimodalDataModule, name: str, dataset: MultimodalDataset
) -> CachedFeatures:
    check_cacheable(model)
    if datamodule.feature_cache is None:
        raise ValueError("The datamodule has no feature cache. Fix: set data.feature_cache to a directory.")
    strategy = datamodule.trainer.strategy if datamodule.trainer is not None else None
    stores = {}
    for modality, encoder in model.feature_encoders().items():
        if strategy is not None and not strategy.is_global_zero:
            strategy.barrier("feature_cache")  # rank 0 writes the entry first
        start = time.perf_counter()
        stores[modality] = store = load_or_build(
            datamodule.feature_cache,
            encoder,
            modality,
            dataset,
            collate=datamodule.collate,
            fields=model.feature_fields(),
            device=model.device,
            batch_size=datamodule.batch_size,
            num_workers=datamodule.num_workers,
        )
        if strategy is not None and strategy.is_global_zero:
            strategy.barrier("feature_cache")
        done = f"computed in {time.perf_counter() - start:.1f} s" if store.computed else "reused"
        rank_zero_info(f"Feature cache: {name} {modality} features of {len(dataset)} samples {done}: {store.path}")
    return CachedFeatures(dataset.ids, dataset.labels, stores)
