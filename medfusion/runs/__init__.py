"""Runs: reading and writing checkpoints safely (weights-only, atomic), and resuming a run in its own directory.
The lowest layer: it imports no other medfusion package."""

from medfusion.runs.checkpoints import CheckpointError, load_safely, load_weights, read_checkpoint
from medfusion.runs.resume import SafeCheckpointIO, resolve_resume

__all__ = ["CheckpointError", "SafeCheckpointIO", "load_safely", "load_weights", "read_checkpoint", "resolve_resume"]
