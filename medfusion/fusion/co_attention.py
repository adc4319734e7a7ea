"""Co-attention fusion: every input's stream attends over all the other streams in parallel, layer by layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from medfusion.fusion.attention import TokenFusion, block_stack, concat_tokens, context_key, masked_mean
from medfusion.fusion.base import FUSIONS
from medfusion.fusion.checks import Inputs, Masks


@FUSIONS.register("co_attention")
class CoAttentionFusion(TokenFusion):
    """N-stream co-attention: ViLBERT's co-attentional layers (Lu et al., 2019; without the intra-modal layers)
    generalised from two streams to N.

    Every input ``m`` keeps a stream ``s_m^0 = e_m`` (see :class:`TokenFusion`); each layer updates all streams in
    parallel from the same layer inputs, ``s_m^{l+1} = Block_m^l(s_m^l; [s_n^l]_{n≠m})``, keys/values being the
    other streams' current tokens concatenated in fusion order (masks likewise); then
    ``h = W [mean_real(LN_m(s_m^L))]_m`` over each stream's real tokens. For two inputs this is exactly ViLBERT's
    ``t' = Block(t; v)``, ``v' = Block(v; t)``.

    Why one block over the concatenated others rather than a block per pair (updates averaged) or one joint
    token stack (VisualBERT-style, with modality-type embeddings): a single softmax over all the other inputs'
    tokens lets a stream put its attention on the informative modality (averaging pairs forces a 1/(N−1) share
    on each, uninformative or not); the cost stays N blocks per layer (not N(N−1)); and unlike a joint stack it
    keeps co-attention's cross-modal-only updates and its per-query maps, ``"<m>-><others joined by '+'>"``
    (``"text->image"`` and ``"image->text"`` for two inputs) in :meth:`attention_maps` with ``store_attention``.
    """

    def __init__(
        self,
        dims: Mapping[str, Any] | None = None,
        out_dim: int | None = None,
        *,
        image_dim: Any = None,
        text_dim: Any = None,
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
        self.num_layers = num_layers
        stack = {m: block_stack(num_layers, self.dim, num_heads, dropout, ffn_mult) for m in self.names}
        self.blocks = nn.ModuleDict(stack)
        self.norms = nn.ModuleDict({m: nn.LayerNorm(self.dim) for m in self.names})
        self.out = nn.Linear(len(self.names) * self.dim, self.out_dim)

    def fuse(self, inputs: Inputs, masks: Masks) -> torch.Tensor:
        """Fuse validated token inputs ``{name: [B, N_m, D_m]}`` (masks True = real) into ``[B, out_dim]``."""
        streams = self.embed(inputs, masks)
        maps: dict[str, torch.Tensor | None] = {}
        for layer in range(self.num_layers):
            need_weights = self.store_attention and layer == self.num_layers - 1
            updated = {}
            for name in self.names:
                others = [other for other in self.names if other != name]
                context, context_mask = concat_tokens(streams, masks, others)
                block = self.blocks[name][layer]
                updated[name], maps[context_key(name, others)] = block(
                    streams[name], context, context_mask, need_weights=need_weights
                )
            streams = updated
        self.keep_attention(maps)
        pooled = [masked_mean(self.norms[name](streams[name]), masks[name]) for name in self.names]
        return self.out(torch.cat(pooled, dim=-1))
