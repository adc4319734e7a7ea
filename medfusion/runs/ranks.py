"""Which process of a distributed job this is, without importing Lightning: Lightning records the rank when it is
loaded (``rank_zero_only.rank``); a process that never loaded it runs no distributed job and is rank zero. So the
data layer and a deployed model warn and show progress as a training job does, without Lightning installed."""

from __future__ import annotations

import sys
import warnings


def is_rank_zero() -> bool:
    """True in the process of global rank 0 (or without distributed training)."""
    module = sys.modules.get("lightning.fabric.utilities.rank_zero")
    return module is None or getattr(module.rank_zero_only, "rank", 0) == 0


def rank_zero_warn(message: str, category: type[Warning] = UserWarning, stacklevel: int = 2) -> None:
    """``warnings.warn`` on rank zero only (once per job, not once per process)."""
    if is_rank_zero():
        warnings.warn(message, category, stacklevel=stacklevel + 1)
