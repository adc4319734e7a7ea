"""Work done once per job: on global rank zero, with its result (or its error) sent to every other rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def once_per_job(trainer: Any, work: Callable[[], T]) -> T:
    """``work()`` on rank zero and its result broadcast to the other ranks, which wait for it instead of repeating
    it; an exception raised by ``work`` is raised on every rank (so no rank is left waiting). Without a trainer or
    with one process, simply ``work()``."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is None or trainer.world_size < 2:
        return work()
    outcome: tuple[bool, Any] = (True, None)
    if trainer.global_rank == 0:
        try:
            outcome = (True, work())
        except Exception as err:  # sent to every rank, raised there
            outcome = (False, err)
    succeeded, value = strategy.broadcast(outcome, src=0)
    if not succeeded:
        raise value
    return value
