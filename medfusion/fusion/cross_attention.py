"""Cross-attention fusion: the tokens of each query input attend over the tokens of all the other inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medfusion.fusion.attention import TokenFusion, block_stack, concat_tokens, context_key, masked_mean, select_names
from medfusion.fusion.base import FUSIONS
from medfusion.fusion.checks import Inputs, Masks


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(TokenFusion):
    """MulT-style cross-modal attention over N inputs (Tsai et al., 2019; one stream of ViLBERT, Lu et al., 2019).

    For each query input ``q`` in ``queries``, with ``e_m`` the embedded tokens (see :class:`TokenFusion`):
    ``c_q = [e_m]_{m≠q}`` (the other inputs' tokens and masks concatenated in fusion order, so one softmax runs
    over all of them), ``s_q = Blocks_q(e_q; c_q)`` (``num_layers`` pre-norm cross-attention blocks, the context
    fixed), ``p_q = mean_real(LN_q(s_q))`` over ``q``'s real tokens only; ``h = W [p_q1; ...; p_qk]``.

    ``queries`` (in fusion order): None = ``["text"]`` when the inputs are exactly ``image`` and ``text`` (report
    tokens query the patches: the map ``explain`` draws), otherwise every input (MulT: each modality attends over
    all the others). ``["image"]`` gives the other direction of the two-input case.

    With ``store_attention``, :meth:`attention_maps` holds one map per query, keyed ``"<query>-><others joined
    by '+'>"``: ``"text->image"`` [B, heads, N_text, N_image] for two inputs, ``"text->image+tabular"``
    [B, heads, N_text, N_image + N_tabular] (image tokens first) for three.
    """

    def __init__(
        self,
        dims: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: Any = None,
        text_dim: Any = None,
        queries: Sequence[str] | None = None,
        num_layers: int = 1,
        num_heads: int = 8,
        dropout: float = 0.1,
        ffn_mult: int = 4,
        dim: int | None = None,
        max_tokens: int = 256,
        positional: Sequence[str] | None = None,
        store_attention: bool = False,
    ) -> None:
        super().__init__(
            dims,
            out_dim,
            image_dim=image_dim,
            text_dim=text_dim,
            dim=dim,
            max_tokens=max_tokens,
            positional=positional,
            store_attention=store_attention,
        )
        if queries is None:
            queries = ["text"] if set(self.names) == {"image", "text"} else self.names
        self.queries = select_names("queries", queries, self.names, allow_empty=False)
        stack = {q: block_stack(num_layers, self.dim, num_heads, dropout, ffn_mult) for q in self.queries}
        self.blocks = nn.ModuleDict(stack)
        self.norms = nn.ModuleDict({q: nn.LayerNorm(self.dim) for q in self.queries})
        self.out = nn.Linear(len(self.queries) * self.dim, self.out_dim)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        """Fuse validated token inputs ``{name: [B, N_m, D_m]}`` (masks True = real) into ``[B, out_dim]``."""
        tokens = self.embed(inputs, masks)
        pooled, maps = [], {}
        for query in self.queries:
            others = [name for name in self.names if name != query]
            context, context_mask = concat_tokens(tokens, masks, others)
            stream, blocks = tokens[query], self.blocks[query]
            for layer, block in enumerate(blocks):
                last = layer == len(blocks) - 1
                stream, weights = block(stream, context, context_mask, need_weights=self.store_attention and last)
            maps[context_key(query, others)] = weights
            pooled.append(masked_mean(self.norms[query](stream), masks[query]))
        self.keep_attention(maps)
        return self.out(torch.cat(pooled, dim=-1))
