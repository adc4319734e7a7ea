"""Helpers of the missing-modality tests (not a test module): a small tabular encoder and a spy on what an encoder
is given."""

from __future__ import annotations

from functools import partial

import torch

from medfusion.encoders import TabularEncoder

# three levels, as the image and text encoders give, so that the level fusion takes all three modalities
SMALL_TABULAR = partial(TabularEncoder, dim=16, hidden=32, num_layers=3)


def spy(module: torch.nn.Module) -> list[torch.Tensor]:
    """The first input of every call of ``module``: its first positional argument, else its first keyword one (a
    text's ``input_ids``, a tabular ``numeric``: dict inputs are passed as keywords)."""
    calls: list[torch.Tensor] = []

    def record(_, args, kwargs) -> None:
        calls.append((args[0] if args else next(iter(kwargs.values()))).detach().clone())

    module.register_forward_pre_hook(record, with_kwargs=True)
    return calls
