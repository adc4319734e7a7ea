"""Tabular encoder: the FT-Transformer feature tokenizer, one token per clinical variable, and an MLP over them."""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import nn

from medfusion.encoders.encoded import Encoded


class TabularEncoder(nn.Module):
    """One token per feature (Gorishniy et al. 2021, "Revisiting Deep Learning Models for Tabular Data", the
    FT-Transformer feature tokenizer) and an MLP over the flattened tokens for the pooled vector.

    Numeric feature j: ``x_j * W_j + b_j``, with a learned per-feature missing embedding ``m_j`` in place of
    ``x_j * W_j`` where ``numeric_missing`` is True, so a missing value is not the value 0. Categorical feature j:
    its category's embedding plus a per-column bias ``b_j``. Index 0 of each categorical column (the unknown
    bucket of the batch contract: a category not seen in training) starts as a zero embedding, so an unseen
    category gives the neutral token ``b_j`` rather than an untrained random one.

    Pooled: ``num_layers`` blocks (Linear, ReLU, Dropout) of width ``hidden`` over the concatenated tokens, an MLP
    over linear feature embeddings (the "MLP-L" of Gorishniy et al. 2022, "On Embeddings for Numerical Features in
    Tabular Deep Learning"); it shares the tokenizer with the tokens, so token and pooled fusions train the same
    embeddings. Levels: the output of every block, shallow to deep (the last is the pooled vector).

    Args:
        num_numeric: numeric features Fn (linked from the data).
        cardinalities: indices per categorical column, unknown and missing included (linked from the data).
        dim: token width.
        hidden: MLP width (``out_dim``).
        num_layers: MLP blocks (``len(level_dims)``; 3, as the image and text encoders' levels, so level fusions
            take it as it is).
        dropout: after each block's activation.
    """

    def __init__(
        self,
        num_numeric: int,
        cardinalities: Sequence[int],
        dim: int = 64,
        hidden: int = 256,
        num_layers: int = 3,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        cardinalities = [int(c) for c in cardinalities]
        if num_numeric < 0 or any(c < 1 for c in cardinalities):
            raise ValueError(f"num_numeric must be >= 0 and cardinalities >= 1, got {num_numeric}, {cardinalities}")
        if num_numeric + len(cardinalities) == 0:
            raise ValueError("A tabular encoder needs at least one numeric or categorical feature, got none")
        if min(dim, hidden, num_layers) < 1 or not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"dim, hidden and num_layers must be >= 1 and dropout in [0, 1), got {dim}, {hidden}, {num_layers}, "
                f"{dropout}"
            )
        self.num_numeric = num_numeric
        self.cardinalities = cardinalities
        self.num_tokens = num_numeric + len(cardinalities)
        bound = 1 / math.sqrt(dim)  # the FT-Transformer's initialisation of the tokenizer
        self.numeric_weight = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.numeric_bias = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        self.missing = nn.Parameter(torch.empty(num_numeric, dim).uniform_(-bound, bound))
        # every column's categories in one table, column j's index i at offsets[j] + i
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)[: len(cardinalities)]
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("sizes", torch.tensor(cardinalities, dtype=torch.long), persistent=False)
        self.embedding = nn.Embedding(sum(cardinalities), dim)
        nn.init.uniform_(self.embedding.weight, -bound, bound)
        with torch.no_grad():
            self.embedding.weight[offsets] = 0.0  # the unknown index of each column
        self.categorical_bias = nn.Parameter(torch.empty(len(cardinalities), dim).uniform_(-bound, bound))
        widths = [self.num_tokens * dim] + [hidden] * num_layers
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(w_in, w_out), nn.ReLU(), nn.Dropout(dropout)) for w_in, w_out in pairwise(widths)
        )
        self.out_dim: int = hidden
        self.token_dim: int = dim
        self.level_dims: list[int] = [hidden] * num_layers

    def load_pretrained(self) -> None:
        """Nothing to load: tabular encoders are trained from scratch (the hook every encoder has)."""

    def tokenize(self, numeric: torch.Tensor, numeric_missing: torch.Tensor, categorical: torch.Tensor) -> torch.Tensor:
        """Feature tokens ``[B, Fn + Fc, dim]``, the numeric features first."""
        self._check(numeric, numeric_missing, categorical)
        missing = numeric_missing.bool()
        # zero the missing values first: a NaN there would give NaN gradients through the unselected branch
        values = numeric.masked_fill(missing, 0.0).unsqueeze(-1) * self.numeric_weight
        numeric_tokens = torch.where(missing.unsqueeze(-1), self.missing, values) + self.numeric_bias
        categorical_tokens = self.embedding(categorical + self.offsets) + self.categorical_bias
        return torch.cat([numeric_tokens, categorical_tokens], dim=1)

    def _check(self, numeric: torch.Tensor, numeric_missing: torch.Tensor, categorical: torch.Tensor) -> None:
        if numeric.shape != numeric_missing.shape or numeric.ndim != 2 or numeric.shape[1] != self.num_numeric:
            raise ValueError(
                f"numeric and numeric_missing must be [B, {self.num_numeric}], got {tuple(numeric.shape)} and "
                f"{tuple(numeric_missing.shape)}"
            )
        if categorical.shape != (numeric.shape[0], len(self.cardinalities)):
            raise ValueError(
                f"categorical must be [B, {len(self.cardinalities)}] (B = {numeric.shape[0]}), "
                f"got {tuple(categorical.shape)}"
            )
        if torch.compiler.is_exporting():  # a value check is data-dependent; the exported preprocessing is in range
            return
        if categorical.numel() and bool(((categorical < 0) | (categorical >= self.sizes)).any()):
            raise ValueError(
                f"categorical indices out of range: column j takes 0 .. cardinalities[j] - 1 of {self.cardinalities} "
                "(the data's category maps and the encoder's cardinalities disagree)"
            )

    def forward(
        self,
        numeric: torch.Tensor,
        numeric_missing: torch.Tensor,
        categorical: torch.Tensor,
        *,
        tokens: bool = False,
        levels: bool = False,
    ) -> Encoded:
        """Encode ``numeric`` float [B, Fn], ``numeric_missing`` bool [B, Fn] and ``categorical`` long [B, Fc]
        (a batch's tabular dict unpacks into it: ``encoder(**batch["tabular"])``)."""
        feature_tokens = self.tokenize(numeric, numeric_missing, categorical)
        hidden = feature_tokens.flatten(1)
        outputs = []
        for block in self.blocks:
            hidden = block(hidden)
            outputs.append(hidden)
        encoded = Encoded(pooled=hidden, levels=outputs if levels else None)
        if tokens:
            encoded.tokens = feature_tokens
            encoded.mask = torch.ones(feature_tokens.shape[:2], dtype=torch.bool, device=feature_tokens.device)
        return encoded
