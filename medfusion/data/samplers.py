"""Training samplers: class-balanced sampling that works on one process and under DDP alike."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler


def class_balanced_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-sample weights ``1 / count(label)``: every class is drawn with the same total probability."""
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.double)


class DistributedWeightedSampler(DistributedSampler):
    """``WeightedRandomSampler`` (with replacement) whose epoch draw is shared out across DDP ranks.

    Every epoch, one global draw of ``total_size`` indices is made from ``weights`` with a generator
    seeded by ``seed + epoch`` (call :meth:`set_epoch`; Lightning does it every epoch); rank ``r`` takes
    positions ``r, r + R, r + 2R, ...`` of it. The ranks thus see disjoint parts of the same draw, and on
    one process (``num_replicas=1``) the draw is exactly ``WeightedRandomSampler(weights, num_samples,
    generator=torch.Generator().manual_seed(seed + epoch))``. Being a ``DistributedSampler``, it is left in
    place by Lightning, which would otherwise replace the sampler of a training loader under DDP.

    Args:
        weights: one non-negative weight per dataset index (not necessarily summing to 1).
        num_samples: indices drawn per epoch over all ranks (rounded up to a multiple of the number of
            ranks); default ``len(weights)``.
        num_replicas: number of ranks; default the world size when ``torch.distributed`` is initialised, else 1.
        rank: this process's rank; default the distributed rank, else 0.
        seed: seed of the draw; must be the same on every rank.
    """

    def __init__(
        self,
        weights: Sequence[float] | torch.Tensor,
        num_samples: int | None = None,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
    ) -> None:
        weights = torch.as_tensor(weights, dtype=torch.double)
        if weights.ndim != 1 or weights.numel() == 0 or (weights < 0).any() or weights.sum() <= 0:
            raise ValueError("weights must be a non-empty 1-D sequence of non-negative numbers with a positive sum")
        num_samples = len(weights) if num_samples is None else num_samples
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None and not distributed:
            num_replicas = 1
        if rank is None and not distributed:
            rank = 0
        # DistributedSampler only takes len() of its dataset: per-rank length and padded total follow from it.
        super().__init__(range(num_samples), num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.weights = weights

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.total_size, replacement=True, generator=generator)
        return iter(draw[self.rank : self.total_size : self.num_replicas].tolist())
