"""Building blocks of the attention fusions: pre-norm cross-attention block, masked mean, token-input base."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from medfusion.fusion.base import Fusion, InputKind
from medfusion.fusion.checks import Inputs, Masks


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` [B, N, D] over its real tokens (``mask`` [B, N], True = real; None = all real) -> [B, D]."""
    if mask is None:
        return x.mean(dim=1)
    keep = mask.unsqueeze(-1)
    total = x.masked_fill(~keep, 0.0).sum(dim=1)
    return total / keep.sum(dim=1).clamp_min(1).to(x.dtype)


def concat_tokens(
    tokens: Mapping[str, torch.Tensor], masks: Masks, names: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The tokens of ``names`` joined along the token axis, ``[B, Σ N_m, D]``, and their joined masks (None when
    every one of them is None, i.e. all tokens real)."""
    joined = torch.cat([tokens[name] for name in names], dim=1)
    if all(masks[name] is None for name in names):
        return joined, None
    real = [
        masks[name] if masks[name] is not None else tokens[name].new_ones(tokens[name].shape[:2], dtype=torch.bool)
        for name in names
    ]
    return joined, torch.cat(real, dim=1)


def context_key(query: str, context: Sequence[str]) -> str:
    """Key of an attention map in :meth:`Fusion.attention_maps`: ``"text->image"``, or with several context inputs
    (their tokens concatenated in fusion order) ``"text->image+tabular"``."""
    return f"{query}->{'+'.join(context)}"


def select_names(option: str, chosen: Sequence[str], names: Sequence[str], *, allow_empty: bool) -> list[str]:
    """Validate a hyperparameter listing input names (``queries``, ``positional``); returns them in fusion order."""
    if isinstance(chosen, str) or not isinstance(chosen, Sequence):
        raise ValueError(f"{option} must be a list of input names, e.g. [{chosen!r}]; the inputs are {list(names)}")
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise ValueError(f"{option} names unknown inputs {unknown}; the inputs are {list(names)}")
    if len(set(chosen)) != len(chosen):
        raise ValueError(f"{option} lists an input twice: {list(chosen)}")
    if not chosen and not allow_empty:
        raise ValueError(f"{option} needs at least one input name; the inputs are {list(names)}")
    return [name for name in names if name in chosen]


class CrossAttentionBlock(nn.Module):
    """Pre-norm residual cross-attention + feed-forward (ViLBERT, Lu et al. 2019; MulT, Tsai et al. 2019).

    ``q = q + Attn(LN(q), LN(c), LN(c))``, ``q = q + FFN(LN(q))``; no causal mask (patches have no order). The
    attention runs within each sample (``batch_first=True``), never across the batch.
    """

    def __init__(self, dim: int, num_heads: int = 8, dropout: float = 0.1, ffn_mult: int = 4) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.norm_query = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=dropout, batch_first=True)
        self.attn_dropout = nn.Dropout(dropout)
        self.norm_ffn = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_mult * dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_mult * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self,
        query: torch.Tensor,
        context: torch.Tensor,
        context_mask: torch.Tensor | None = None,
        need_weights: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Update ``query`` [B, Nq, D] from ``context`` [B, Nk, D]; weights [B, heads, Nq, Nk] if ``need_weights``."""
        context = self.norm_context(context)
        attended, weights = self.attn(
            self.norm_query(query),
            context,
            context,
            key_padding_mask=None if context_mask is None else ~context_mask,  # nn.MultiheadAttention: True = ignore
            need_weights=need_weights,
            average_attn_weights=False,
        )
        query = query + self.attn_dropout(attended)
        return query + self.ffn(self.norm_ffn(query)), weights


def block_stack(num_layers: int, dim: int, num_heads: int, dropout: float, ffn_mult: int) -> nn.ModuleList:
    """``num_layers`` :class:`CrossAttentionBlock` s of width ``dim`` (at least one)."""
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    return nn.ModuleList(CrossAttentionBlock(dim, num_heads, dropout, ffn_mult) for _ in range(num_layers))


class TokenFusion(Fusion):
    """Base of the attention fusions over N named token inputs ``x_m`` [B, N_m, D_m] with masks (True = real).

    :meth:`embed` gives ``e_m = W_m (x_m ⊙ mask_m) + b_m + P_m[:N_m]``: padded tokens are zeroed first (nothing
    of them, not even NaN, reaches a real token), ``W_m`` projects every input to the common width ``dim``, and a
    learned positional embedding ``P_m`` [max_tokens, dim] (ViT-style, truncated-normal 0.02) is added to the
    inputs in ``positional``: by default every input except one named ``text``, whose encoder hidden states carry
    their positions already (image patches need one; on tabular feature tokens it is a learned per-feature
    embedding). No separate modality-type embedding: ``b_m`` is one (``W_m x + b_m + e_type ≡ W_m x + b'_m``).

    ``store_attention`` (init arg and attribute): while True, each forward keeps the last layer's per-head maps
    for :meth:`attention_maps`; while False, a forward clears them.
    """

    input_kind: ClassVar[InputKind] = "tokens"

    def __init__(
        self,
        dims: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: Any = None,
        text_dim: Any = None,
        dim: int | None = None,
        max_tokens: int = 256,
        positional: Sequence[str] | None = None,
        store_attention: bool = False,
    ) -> None:
        super().__init__(dims, out_dim, image_dim=image_dim, text_dim=text_dim)
        for name, size in self.dims.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise ValueError(f"{name}: a token fusion takes one token size (positive int) per input, got {size!r}")
        self.dim = self.out_dim if dim is None else dim
        if not isinstance(self.dim, int) or self.dim < 1:
            raise ValueError(f"dim must be a positive int (or null = out_dim), got {dim!r}")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive int, got {max_tokens!r}")
        self.max_tokens = max_tokens
        if positional is None:
            positional = [name for name in self.names if name != "text"]
        self.positional = select_names("positional", positional, self.names, allow_empty=True)
        self.store_attention = store_attention
        self.proj = nn.ModuleDict({name: nn.Linear(size, self.dim) for name, size in self.dims.items()})
        self.pos = nn.ParameterDict(
            {name: nn.Parameter(torch.zeros(1, max_tokens, self.dim)) for name in self.positional}
        )
        for table in self.pos.values():
            nn.init.trunc_normal_(table, std=0.02)
        self._attention: dict[str, torch.Tensor] = {}

    def check(self, inputs: Inputs, masks: Masks) -> None:
        """The base checks, and no more tokens than ``max_tokens`` in an input with a positional embedding."""
        super().check(inputs, masks)
        for name in self.positional:
            count = inputs[name].shape[1]
            if count > self.max_tokens:
                raise ValueError(
                    f"{name} has {count} tokens but max_tokens={self.max_tokens}; raise max_tokens "
                    f"(the size of the positional embedding of {self.positional})"
                )

    def embed(self, inputs: Inputs, masks: Masks) -> dict[str, torch.Tensor]:
        """Project every validated input to ``[B, N_m, dim]``, padded tokens zeroed, positions added."""
        embedded = {}
        for name, x in inputs.items():
            mask = masks[name]
            if mask is not None:
                x = x.masked_fill(~mask.unsqueeze(-1), 0.0)
            x = self.proj[name](x)
            if name in self.pos:
                x = x + self.pos[name][:, : x.shape[1]]
            embedded[name] = x
        return embedded

    def keep_attention(self, maps: Mapping[str, torch.Tensor | None]) -> None:
        """Keep the last layer's maps (detached) while ``store_attention`` is True; clear them otherwise."""
        self._attention = (
            {key: weights.detach() for key, weights in maps.items() if weights is not None}
            if self.store_attention
            else {}
        )

    def attention_maps(self) -> dict[str, torch.Tensor]:
        """The last forward's per-head maps ``[B, heads, N_query, N_context]`` keyed by :func:`context_key`
        (``"text->image"``, ``"text->image+tabular"``); empty unless that forward ran with ``store_attention``."""
        return dict(self._attention)
