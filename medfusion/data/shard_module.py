"""The LightningDataModule of packed streaming shards (``medfusion pack``): the same loaders, samplers, collate
function and checkpoint state as :class:`MultimodalDataModule`, with samples read from LitData chunks."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader

from medfusion.data.datamodule import MultimodalDataModule
from medfusion.data.errors import ConfigError
from medfusion.data.loaders import SamplerKind
from medfusion.data.options import check_loader_options
from medfusion.data.shard_store import join, normalize
from medfusion.data.shards import ShardDataset, read_meta, require_litdata, streamed_set
from medfusion.data.state import check_same_state, find_data_state
from medfusion.data.tabular import TabularPreprocessor
from medfusion.data.token_ids import encode
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD, cached_transform
from medfusion.runs.checkpoints import check_class_names, read_checkpoint, tokenizer_from_state

ShardOrder = Literal["exact", "stream"]


class ShardDataModule(MultimodalDataModule):
    """Classification data from shards written by ``medfusion pack``: the classes, training counts, modalities,
    tokenizer, tabular statistics, splits and image size come with them (``medfusion.json``), so the model links
    to it as to :class:`MultimodalDataModule`, and checkpoints hold the same data state.

    Images were decoded and resized at packing time: augmentation (``augment``) crops within the stored square,
    as with ``data.image_cache``. Shards may lie in a local folder or under an object-store prefix (``s3://``,
    ``gs://``, ``r2://``; credentials and endpoint from the environment, downloaded chunks kept under
    ``cache_dir``).

    Two training orders: ``"exact"`` (default) reads samples by position with :class:`MultimodalDataModule`'s
    loaders, samplers and DDP sharding, so a run from shards gives the metrics of a run from the folder layout
    with the image cache, and resumes as it does. ``"stream"`` reads the training set with LitData's
    ``StreamingDataLoader``: chunks shuffled with ``seed`` and the epoch, each rank and worker streaming its own
    share in sequence (what an object store serves fast), and the loader's position travels in checkpoints, so a
    run resumed from a mid-epoch checkpoint reads exactly the samples the epoch had left (augmentations are drawn
    anew). Evaluation and prediction sets are read by position, in order, every sample once, in both.

    Args:
        shards: the folder or prefix ``medfusion pack`` wrote.
        augment: random crops, flips and colour jitter in training.
        mean: normalisation mean.
        std: normalisation std.
        robustness: one ``no_<name>`` test set per modality, as in :class:`MultimodalDataModule`.
        batch_size: samples per batch (per process under DDP).
        num_workers: DataLoader worker processes.
        sampler: ``"shuffle"`` or ``"balanced"`` (``order="exact"`` only), as in :class:`MultimodalDataModule`.
        seed: seed of the training order.
        from_checkpoint: a trained model's checkpoint, whose classes, modalities and tokenizer must be the shards'.
        order: ``"exact"`` or ``"stream"`` (see above).
        cache_dir: where chunks of an object-store prefix are downloaded; default ``<medfusion cache>/shards``.
    """

    def __init__(
        self,
        shards: str,
        augment: bool = True,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
        robustness: bool = False,
        batch_size: int = 32,
        num_workers: int = 0,
        sampler: SamplerKind = "shuffle",
        seed: int = 42,
        from_checkpoint: str | None = None,
        order: ShardOrder = "exact",
        cache_dir: str | None = None,
    ) -> None:
        L.LightningDataModule.__init__(self)  # nothing to read: the parent's reading is done by the packing
        check_loader_options(batch_size=batch_size, num_workers=num_workers)
        if sampler not in ("shuffle", "balanced"):
            raise ValueError(f"sampler must be 'shuffle' or 'balanced', got {sampler!r}")
        if order not in ("exact", "stream"):
            raise ValueError(f"order must be 'exact' or 'stream', got {order!r}")
        if order == "stream" and sampler == "balanced":
            raise ConfigError("sampler='balanced' draws by position: it needs order='exact', not 'stream'.")
        self.shards, self.order, self.cache_dir = normalize(shards), order, cache_dir
        meta = read_meta(self.shards)
        state = meta["state"]
        self._sets, self._report = meta["sets"], meta["report"]
        self.image_size, self.max_length = meta["image_size"], meta["max_length"]
        self.augment, self.mean, self.std, self.seed = augment, mean, std, seed
        self.group_column = state.get("group_column")
        self.batch_size, self.num_workers, self.sampler = batch_size, num_workers, sampler
        self.feature_cache = self.image_cache = None
        self._serve = None
        self.modality_kinds = dict(state["modalities"])
        self.modalities = list(self.modality_kinds)
        self.image_names = [name for name, kind in self.modality_kinds.items() if kind == "image"]
        self.crops, self.slices, self.study_column = {}, {}, None  # crops are packed cut; no stacks nor studies
        self.uses_text = "text" in self.modality_kinds
        # texts were packed with their knowledge passages (if any): their ids stay with the packing run
        self.knowledge, self.knowledge_state = None, state.get("knowledge")
        self.class_names, self.class_counts = list(state["class_names"]), state["class_counts"]
        self.tokenizer = tokenizer_from_state(state["tokenizer"]) if state.get("tokenizer") else None
        self.vocab_size = len(self.tokenizer) if self.tokenizer is not None else None
        self.tabular = TabularPreprocessor.from_state(state["tabular"]) if state.get("tabular") else None
        if from_checkpoint:
            trained = find_data_state(read_checkpoint(from_checkpoint), from_checkpoint)
            check_class_names(trained["class_names"], self.class_names, from_checkpoint)
            check_same_state(
                {"modalities": trained["modalities"], "knowledge": trained.get("knowledge")},
                {"modalities": self.modality_kinds, "knowledge": self.knowledge_state},
            )
        if robustness and len(self.modalities) < 2:
            raise ValueError(f"robustness needs two modalities or more, got {self.modalities}")
        self.robustness_sets = [f"no_{name}" for name in self.modalities] if robustness else []
        externals = [name.removeprefix("test_") for name in self._sets if name.startswith("test_")]
        self.test_set_names = [*(["test"] if "test" in self._sets else []), *externals, *self.robustness_sets]
        self._labels = {"train": self._sets.get("train", {}).get("labels", [])}  # for the balanced sampler
        self.data_report: dict[str, int] = {}
        self.datasets = {}

    def split_labels(self) -> dict[str, Sequence[int]]:
        """The class index of every sample of each packed split (``train``, ``val``, ``test``)."""
        return {name: listed["labels"] for name, listed in self._sets.items() if name in ("train", "val", "test")}

    @property
    def test_sizes(self) -> dict[str, int]:
        names = [n for n in self.test_set_names if n not in self.robustness_sets]
        return {name: len(self._sets[name if name == "test" else f"test_{name}"]["ids"]) for name in names}

    def _shard_set(self, source: str, train: bool) -> ShardDataset:
        """The packed set ``source``, its data report counts added to :attr:`data_report`."""
        listed = self._sets[source]
        tokenize = partial(encode, self.tokenizer, self.max_length) if self.tokenizer is not None else None
        transform = cached_transform(self.image_size, train and self.augment, self.mean, self.std)
        folder = join(self.shards, source)
        if train and self.order == "stream":
            dataset = streamed_set(folder, self.modality_kinds, transform, tokenize, self.seed, self.cache_dir)
        else:
            ids, labels = listed["ids"], listed["labels"]
            dataset = ShardDataset(folder, ids, labels, self.modality_kinds, transform, tokenize, self.cache_dir)
        self.data_report.update({k: v for k, v in self._report.items() if k.endswith(f"/{source}")})
        return dataset

    def setup(self, stage: str | None = None) -> None:
        wanted = {
            "fit": ["train", "val"],
            "validate": ["val"],
            "test": [n for n in self._sets if n == "test" or n.startswith("test_")],
            "predict": ["predict"],
        }
        names = [n for s in ([stage] if stage else list(wanted)) for n in wanted.get(s, [])]
        for name in names:
            if name in self.datasets:
                continue
            source = name if name in self._sets or name != "predict" else "test"  # no prediction set: the test set
            if source not in self._sets:
                raise ValueError(f"{self.shards} holds no {source!r} set (it has {sorted(self._sets)})")
            self.datasets[name] = self._shard_set(source, train=name == "train")
        if stage in ("test", None) and "test" in self.datasets:
            for name in self.robustness_sets:
                self.datasets[f"test_{name}"] = self.datasets["test"].without(name.removeprefix("no_"))

    def train_dataloader(self) -> DataLoader:
        """The folder layout's :class:`~medfusion.data.loaders.EpochSeededLoader` (``order="exact"``), or LitData's
        ``StreamingDataLoader`` over the streamed training set (``order="stream"``), stateful for checkpoints."""
        if self.order == "exact":
            return super().train_dataloader()
        dataset = self._data("train")
        require_litdata()
        from medfusion.data.stream_loader import StreamLoader

        return StreamLoader(
            dataset,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=getattr(dataset, "collate_fn", None) or self.collate,
            drop_last=len(dataset) > self.batch_size,
            pin_memory=torch.cuda.is_available(),
        )
