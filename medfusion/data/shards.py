"""Streaming shards: a configuration's data packed once into LitData's optimized chunks (``medfusion pack``), then
read from them by every rank and node instead of the CSV, the image files and the texts.

Each set (``train``, ``val``, ``test``, every ``test_<name>``, ``predict`` when there is a prediction CSV) is one
LitData dataset ``<out>/<set>/`` (``index.json`` + ``chunk-*.bin``): per sample its images decoded, resized and
centre-cropped to ``image_size`` (uint8 ``[3, S, S]``, as the decoded-image cache stores them), its text, its
encoded tabular row and a small JSON record (position, id, label, which modalities it has). ``<out>/medfusion.json``
holds what a model needs from the data (the datamodule's ``state_dict``: classes, training counts, modalities,
tokenizer, tabular statistics), the image size, each set's ids and labels, and the data report counts, so that
splits, labels, class names and the tokenizer come with the shards.

Samples are read by position (LitData's ``StreamingDataset.__getitem__``), so loaders, samplers, seeds and DDP
sharding are the folder layout's: a run from shards gives the metrics of a run from the folder with the image
cache. Packed shards never hold pickled objects, and reading refuses a shard that declares one (LitData would
unpickle it, which can run code).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from medfusion.data.datamodule import MultimodalDataModule
from medfusion.data.dataset import MultimodalDataset
from medfusion.data.errors import ConfigError, DataError
from medfusion.data.shard_store import is_empty, join, normalize, read_text, stream_cache, write_text
from medfusion.data.transforms import decode_transform

SHARD_FORMAT = 1
META = "medfusion.json"
_INSTALL = "pip install 'medfusion[shards]' (or: pip install litdata)"


def require_litdata() -> Any:
    try:
        import litdata
    except ImportError:
        raise ConfigError(f"Streaming shards need LitData. Fix: {_INSTALL}.") from None
    return litdata


def pack_sample(
    dataset: MultimodalDataset, decode: Callable[[Any], torch.Tensor], size: int, index: int
) -> dict[str, np.ndarray]:
    """Sample ``index`` of ``dataset`` as arrays only (no strings LitData could take for file paths, no pickle);
    ``decode`` (:func:`~medfusion.data.transforms.decode_transform` of ``size``) turns its images into uint8."""
    record: dict[str, Any] = {"index": index, "id": dataset.ids[index], "label": int(dataset.labels[index])}
    present: dict[str, bool] = {}
    item: dict[str, np.ndarray] = {}
    for name, paths in dataset.images.items():
        present[name] = paths[index] is not None
        image = dataset.load_image(name, index)
        if isinstance(image, list):  # a slice stack: [K, 3, S, S]
            item[name] = torch.stack(decode(image)).numpy()
        else:
            item[name] = decode(image).numpy() if image is not None else np.zeros((3, size, size), np.uint8)
    if dataset.texts is not None and dataset.token_ids is not None:
        record["text"] = dataset.texts[index]
        present["text"] = record["text"] is not None
    if dataset.tabular is not None:
        row = dataset.tabular.row(index)
        item["tabular_numeric"] = np.asarray(row["numeric"], np.float32)
        item["tabular_numeric_missing"] = np.asarray(row["numeric_missing"], np.uint8)
        item["tabular_categorical"] = np.asarray(row["categorical"], np.int64)
        present["tabular"] = bool(dataset.tabular_present[index])
    record["present"] = present
    item["record"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8).copy()
    return item


def sets_to_pack(datamodule: MultimodalDataModule) -> dict[str, MultimodalDataset]:
    """The datasets of a set-up ``datamodule`` that shards hold: all but the robustness sets (rebuilt from the test
    set when read) and ``predict`` when it is only the test split again. Slice stacks and studies are refused
    (a :class:`ConfigError`): shards hold one image per modality and sample."""
    if datamodule.slices or datamodule.study_column is not None:
        raise ConfigError(
            "medfusion pack writes one image per modality and sample; data.slices and data.study_column are not "
            "packed yet. Fix: train from the folder layout (with data.image_cache for speed)."
        )
    derived = {f"test_{name}" for name in datamodule.robustness_sets}
    return {
        name: dataset
        for name, dataset in datamodule.datasets.items()
        if name not in derived and (name != "predict" or datamodule.has_predict_csv)
    }


def pack(
    datasets: dict[str, MultimodalDataset],
    out_dir: str | Path,
    image_size: int,
    max_length: int,
    state: dict[str, Any],
    report: dict[str, int],
    num_workers: int = 1,
    chunk_bytes: str = "64MB",
) -> Path:
    """Write ``datasets`` (by set name) to ``out_dir`` (a folder or an object-store prefix) as LitData chunks, with
    ``medfusion.json`` (``state`` is the datamodule's ``state_dict``, ``report`` its data report, ``max_length`` its
    text truncation); nothing may be stored there yet. Returns ``out_dir`` as written."""
    litdata = require_litdata()
    out = normalize(out_dir)
    if not is_empty(out):
        raise ConfigError(f"pack: {out} is not empty. Fix: name a new or empty folder or prefix.")
    sets = {}
    for name, dataset in datasets.items():
        litdata.optimize(
            fn=partial(pack_sample, dataset, decode_transform(image_size), image_size),
            inputs=list(range(len(dataset))),
            output_dir=join(out, name),
            num_workers=num_workers,
            chunk_bytes=chunk_bytes,
            reorder_files=False,
            keep_data_ordered=True,
            start_method="fork" if os.name == "posix" else None,
            verbose=False,
        )
        sets[name] = {"ids": list(dataset.ids), "labels": [int(label) for label in dataset.labels]}
    meta = {"format": SHARD_FORMAT, "image_size": image_size, "max_length": max_length, "state": state}
    meta |= {"report": report, "sets": sets}
    write_text(join(out, META), json.dumps(meta))
    return out


def read_meta(location: str) -> dict[str, Any]:
    """``medfusion.json`` of the shards at ``location`` (a folder or prefix), with a :class:`DataError` naming what
    is wrong."""
    path = join(location, META)
    try:
        text = read_text(path)
        meta = json.loads(text) if text is not None else None
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({err}). Fix: pack the shards again.") from None
    if meta is None:
        raise DataError(f"{path} not found: {location} holds no medfusion shards. Fix: write them with medfusion pack.")
    if meta.get("format") != SHARD_FORMAT:
        raise DataError(
            f"{path} is shard format {meta.get('format')!r}; this medfusion reads format {SHARD_FORMAT}. "
            "Fix: pack the shards again with this medfusion."
        )
    return meta


def _count_samples(folder: str) -> int:
    """The number of samples a set's ``index.json`` lists (all ranks' together), with a :class:`DataError` when it
    declares pickled fields or cannot be read."""
    index = join(folder, "index.json")
    try:
        content = json.loads(read_text(index) or "")
        formats = content["config"]["data_format"]
        count = sum(int(chunk["chunk_size"]) for chunk in content["chunks"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{index} is not a LitData index ({err}). Fix: pack the shards again.") from None
    if any("pickle" in str(f) for f in formats):
        raise DataError(
            f"{index} declares pickled fields ({formats}): reading them would run code from the file. medfusion "
            "never writes those. Fix: pack the data again with medfusion pack."
        )
    return count


Transform = Callable[[torch.Tensor], torch.Tensor]
Tokenize = Callable[[str], list[int]]


def unpack_sample(
    item: dict[str, Any], kinds: dict[str, str], transform: Transform, tokenize: Tokenize | None, absent: frozenset
) -> dict[str, Any]:
    """A packed ``item`` as :class:`MultimodalDataset` gives the sample: images through ``transform`` from the
    stored uint8, texts tokenized, tabular rows as stored; the modalities in ``absent`` taken away."""
    record = json.loads(bytes(item["record"]))
    sample: dict[str, Any] = {"id": record["id"], "label": record["label"], "present": {}}
    for name, kind in kinds.items():
        present = bool(record["present"][name]) and name not in absent
        sample["present"][name] = present
        if kind == "image":
            sample[name] = transform(torch.from_numpy(np.array(item[name]))) if present else None
        elif kind == "text":
            sample[name] = tokenize(record["text"]) if present and tokenize is not None else None
        else:
            sample[name] = {
                "numeric": np.array(item["tabular_numeric"]),
                "numeric_missing": np.array(item["tabular_numeric_missing"]).astype(bool),
                "categorical": np.array(item["tabular_categorical"]),
            }
    return sample


class ShardDataset(Dataset):
    """One packed set, read by position: samples exactly like :class:`MultimodalDataset`'s
    (:func:`unpack_sample`), so any sampler and DDP sharding read it as they read the folder.

    Args:
        folder: the set's LitData folder or prefix (``<shards>/<set>``).
        ids: the set's sample ids, in order (from ``medfusion.json``).
        labels: their class indices.
        kinds: the modality names and kinds of the samples.
        transform: applied to each stored uint8 image.
        tokenize: a text to its token ids.
        cache_dir: where the chunks of an object-store prefix are downloaded (see
            :func:`~medfusion.data.shard_store.stream_cache`).
    """

    def __init__(
        self,
        folder: str,
        ids: Sequence[str],
        labels: Sequence[int],
        kinds: dict[str, str],
        transform: Transform,
        tokenize: Tokenize | None,
        cache_dir: str | Path | None = None,
    ) -> None:
        count = _count_samples(folder)
        self.folder, self.ids, self.labels, self.kinds = folder, list(ids), list(labels), dict(kinds)
        self.transform, self.tokenize = transform, tokenize
        self.absent: frozenset[str] = frozenset()  # modalities taken away (robustness sets)
        # Samples are read by position in any order: decode one at a time, not the next ~100 of its chunk each time.
        cache = stream_cache(folder, cache_dir)
        self.stream = require_litdata().StreamingDataset(folder, cache_dir=cache, batch_decode=False)
        # Not len(self.stream): under DDP that is one rank's share, while positions stay global.
        if count != len(self.ids):
            listed = f"{folder} holds {count} samples, {META} lists {len(self.ids)}"
            raise DataError(f"{listed}. Fix: pack the shards again.")

    @property
    def modalities(self) -> dict[str, str]:
        return self.kinds

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.stream[index]
        sample = unpack_sample(item, self.kinds, self.transform, self.tokenize, self.absent)
        if sample["id"] != self.ids[index] or json.loads(bytes(item["record"]))["index"] != index:
            raise DataError(
                f"{self.folder}: position {index} holds sample {sample['id']!r}, not {self.ids[index]!r}: the "
                "chunks are out of order. Fix: pack the shards again."
            )
        return sample

    def without(self, modality: str) -> ShardDataset:
        """A copy in which ``modality`` is absent for every sample (for robustness evaluation)."""
        if modality not in self.kinds:
            raise ValueError(f"this dataset has no modality {modality!r} to remove (it has {list(self.kinds)})")
        dataset = copy.copy(self)
        dataset.absent = self.absent | {modality}
        return dataset


def streamed_set(
    folder: str,
    kinds: dict[str, str],
    transform: Transform,
    tokenize: Tokenize | None,
    seed: int,
    cache_dir: str | Path | None = None,
) -> Any:
    """One packed set as LitData streams it: a ``StreamingDataset`` shuffled chunk by chunk with ``seed`` (and the
    epoch), each rank and worker reading its own chunks, its samples :func:`unpack_sample`'s. Read it with a
    ``litdata.StreamingDataLoader``, whose state (samples yielded) resumes an epoch where a checkpoint left it."""
    _count_samples(folder)
    return require_litdata().StreamingDataset(
        folder,
        cache_dir=stream_cache(folder, cache_dir),
        shuffle=True,
        seed=seed,
        transform=partial(unpack_sample, kinds=kinds, transform=transform, tokenize=tokenize, absent=frozenset()),
    )
