"""A training DataLoader whose epochs are reproducible from the run's seed and the epoch number alone."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader

from medfusion.runs.resume import seed_epoch


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
