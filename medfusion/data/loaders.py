"""The datamodule's loaders: a training DataLoader whose epochs are reproducible from the run's seed and the epoch
number alone, and the sampler choice (shuffle, class-balanced, distributed)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from medfusion.data.samplers import DistributedWeightedSampler, class_balanced_weights
from medfusion.runs.resume import epoch_seed, seed_epoch

SamplerKind = Literal["shuffle", "balanced"]


class EpochSeededLoader(DataLoader):
    """``DataLoader`` that, each time an epoch's iteration starts, reseeds Python, NumPy and torch from
    ``(seed_everything, epoch)`` and sets its sampler's epoch, before the workers, the sampler or the first batch
    draw anything. Data order, augmentation, worker seeds and dropout of an epoch then depend on nothing else.

    It is stateful for Lightning (``state_dict``/``load_state_dict`` travel in checkpoints), so a run resumed
    from the end of epoch ``k`` starts epoch ``k + 1`` exactly as the uninterrupted run did. Use it with
    ``persistent_workers=False``: persistent workers would carry their random state across epochs.

    Args:
        epoch: the epoch of the first iteration (then one more per iteration).
        *args, **kwargs: as for :class:`~torch.utils.data.DataLoader`.
    """

    def __init__(self, *args: Any, epoch: int = 0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        seed_epoch(self.epoch)
        for sampler in (self.sampler, getattr(self.batch_sampler, "sampler", None)):
            if hasattr(sampler, "set_epoch"):
                sampler.set_epoch(self.epoch)
        self.epoch += 1
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """The epoch the next iteration will be (stored in Lightning checkpoints)."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self.epoch = int(state_dict["epoch"])


def make_loader(
    dataset: Dataset,
    *,
    train: bool,
    batch_size: int,
    num_workers: int,
    collate: Callable[[list[Any]], Any],
    balanced_labels: Sequence[int] | None = None,
    seed: int = 0,
    epoch: int = 0,
) -> DataLoader:
    """The loader of one dataset: for training an :class:`EpochSeededLoader` starting at ``epoch``, shuffled or,
    given ``balanced_labels``, drawn class-balanced; for evaluation in order. Under DDP each rank reads its share
    (evaluation without the padding duplicates that would bias metrics). A dataset may declare how it is read:
    ``collate_fn`` instead of ``collate``, and ``main_process_only = True`` for no worker processes."""
    sampler = None
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    if train and balanced_labels is not None:
        # A DistributedSampler subclass: under DDP, Lightning keeps it instead of substituting its own.
        sampler = DistributedWeightedSampler(class_balanced_weights(balanced_labels), seed=seed)
    elif train and distributed:
        # Our own, so that the loader sets its epoch before the first draw (Lightning's is set after).
        sampler = DistributedSampler(dataset, shuffle=True, seed=epoch_seed(0))
    elif not train and distributed:
        # The default DistributedSampler pads with duplicates, which biases evaluation metrics.
        sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
    loader, options = (EpochSeededLoader, {"epoch": epoch}) if train else (DataLoader, {})
    workers = 0 if getattr(dataset, "main_process_only", False) else num_workers
    return loader(
        dataset,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(dataset) > batch_size,
        num_workers=workers,
        persistent_workers=workers > 0 and not train,  # fresh workers: seeded per epoch
        pin_memory=torch.cuda.is_available(),
        collate_fn=getattr(dataset, "collate_fn", None) or collate,
        **options,
    )
