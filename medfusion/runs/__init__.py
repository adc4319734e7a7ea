"""Runs: reading and writing checkpoints safely (weights-only, atomic), and resuming a run in its own directory.
The lowest layer: it imports no other medfusion package. The names below are imported on first use (resuming
needs Lightning; reading a checkpoint does not)."""

from __future__ import annotations

from medfusion.runs.lazy import lazy_exports

_EXPORTS = {
    "CheckpointError": "medfusion.runs.checkpoints",
    "load_safely": "medfusion.runs.checkpoints",
    "load_weights": "medfusion.runs.checkpoints",
    "read_checkpoint": "medfusion.runs.checkpoints",
    "SafeCheckpointIO": "medfusion.runs.resume",
    "resolve_resume": "medfusion.runs.resume",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
