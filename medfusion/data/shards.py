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
from medfusion.data.transforms import decode_transform

SHARD_FORMAT = 1
META = "medfusion.json"
_INSTALL = "pip install 'medfusion[shards]' (or: pip install litdata)"


def _litdata() -> Any:
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
        image = dataset.open_image(paths, index)
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
    set when read) and ``predict`` when it is only the test split again."""
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
    """Write ``datasets`` (by set name) to ``out_dir`` as LitData chunks, with ``medfusion.json`` (``state`` is the
    datamodule's ``state_dict``, ``report`` its data report, ``max_length`` its text truncation); ``out_dir`` must not
    exist or be empty."""
    litdata = _litdata()
    out = Path(out_dir).expanduser()
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"pack: {out} is not empty. Fix: name a new or empty folder.")
    sets = {}
    for name, dataset in datasets.items():
        litdata.optimize(
            fn=partial(pack_sample, dataset, decode_transform(image_size), image_size),
            inputs=list(range(len(dataset))),
            output_dir=str(out / name),
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
    (out / META).write_text(json.dumps(meta))
    return out


def read_meta(location: str | Path) -> dict[str, Any]:
    """``medfusion.json`` of packed shards, with a :class:`DataError` naming what is wrong."""
    path = Path(location).expanduser() / META
    if not path.is_file():
        raise DataError(f"{path} not found: {location} holds no medfusion shards. Fix: write them with medfusion pack.")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DataError(f"{path} is not readable JSON ({err}). Fix: pack the shards again.") from None
    if meta.get("format") != SHARD_FORMAT:
        raise DataError(
            f"{path} is shard format {meta.get('format')!r}; this medfusion reads format {SHARD_FORMAT}. "
            "Fix: pack the shards again with this medfusion."
        )
    return meta


def _refuse_pickle(folder: Path) -> None:
    """A :class:`DataError` when a set's ``index.json`` declares pickled fields (or cannot be read)."""
    index = folder / "index.json"
    try:
        formats = json.loads(index.read_text(encoding="utf-8"))["config"]["data_format"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"{index} is not a LitData index ({err}). Fix: pack the shards again.") from None
    if any("pickle" in str(f) for f in formats):
        raise DataError(
            f"{index} declares pickled fields ({formats}): reading them would run code from the file. medfusion "
            "never writes those. Fix: pack the data again with medfusion pack."
        )


class ShardDataset(Dataset):
    """One packed set, read by position: samples exactly like :class:`MultimodalDataset`'s (images through
    ``transform`` from the stored uint8, texts tokenized as read, tabular rows as stored).

    Args:
        folder: the set's LitData folder (``<shards>/<set>``).
        ids: the set's sample ids, in order (from ``medfusion.json``).
        labels: their class indices.
        kinds: the modality names and kinds of the samples.
        transform: applied to each stored uint8 image.
        tokenize: a text to its token ids.
    """

    def __init__(
        self,
        folder: str | Path,
        ids: Sequence[str],
        labels: Sequence[int],
        kinds: dict[str, str],
        transform: Callable[[torch.Tensor], torch.Tensor],
        tokenize: Callable[[str], list[int]] | None,
    ) -> None:
        folder = Path(folder)
        _refuse_pickle(folder)
        self.folder, self.ids, self.labels, self.kinds = folder, list(ids), list(labels), dict(kinds)
        self.transform, self.tokenize = transform, tokenize
        self.absent: set[str] = set()  # modalities taken away (robustness sets)
        # Samples are read by position in any order: decode one at a time, not the next ~100 of its chunk each time.
        self.stream = _litdata().StreamingDataset(str(folder), batch_decode=False)
        if len(self.stream) != len(self.ids):
            listed = f"{folder} holds {len(self.stream)} samples, {META} lists {len(self.ids)}"
            raise DataError(f"{listed}. Fix: pack the shards again.")

    @property
    def modalities(self) -> dict[str, str]:
        return self.kinds

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.stream[index]
        record = json.loads(bytes(item["record"]))
        if record["index"] != index or record["id"] != self.ids[index]:
            raise DataError(
                f"{self.folder}: position {index} holds sample {record['index']} ({record['id']!r}), not "
                f"{self.ids[index]!r}: the chunks are out of order. Fix: pack the shards again."
            )
        sample: dict[str, Any] = {"id": record["id"], "label": record["label"], "present": {}}
        for name, kind in self.kinds.items():
            present = bool(record["present"][name]) and name not in self.absent
            sample["present"][name] = present
            if kind == "image":
                sample[name] = self.transform(torch.from_numpy(np.array(item[name]))) if present else None
            elif kind == "text":
                sample[name] = self.tokenize(record["text"]) if present else None
            else:
                sample[name] = {
                    "numeric": np.array(item["tabular_numeric"]),
                    "numeric_missing": np.array(item["tabular_numeric_missing"]).astype(bool),
                    "categorical": np.array(item["tabular_categorical"]),
                }
        return sample

    def without(self, modality: str) -> ShardDataset:
        """A copy in which ``modality`` is absent for every sample (for robustness evaluation)."""
        if modality not in self.kinds:
            raise ValueError(f"this dataset has no modality {modality!r} to remove (it has {list(self.kinds)})")
        dataset = copy.copy(self)
        dataset.absent = self.absent | {modality}
        return dataset
