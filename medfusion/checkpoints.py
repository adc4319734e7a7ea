"""Reading medfusion checkpoints safely (``weights_only``: no code from the file is run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint dict of a Lightning ``.ckpt`` file, loaded on CPU with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (no 'state_dict'); pass a .ckpt written by a fit")
    return checkpoint


def load_weights(model: nn.Module, path: str | Path) -> dict[str, Any]:
    """Load a checkpoint's weights into ``model`` (strictly: every key must match); returns the checkpoint."""
    checkpoint = read_checkpoint(path)
    model.load_state_dict(checkpoint["state_dict"])
    return checkpoint
