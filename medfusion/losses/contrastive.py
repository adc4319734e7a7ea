"""Contrastive auxiliary objectives on embeddings: supervised contrastive (SupCon) and CLIP's InfoNCE."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def supcon_loss(embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020; "L_out"), one view per sample.

    Embeddings [B, D] are L2-normalised; for each anchor, positives are the other samples with its label.
    Anchors without a positive in the batch are left out (the naive formula divides by zero there); when no
    anchor has a positive the result is a zero that still belongs to the graph.
    """
    z = F.normalize(embeddings.float(), dim=-1)
    n = z.shape[0]
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    positives = (labels.unsqueeze(0) == labels.unsqueeze(1)) & ~self_mask
    num_pos = positives.sum(1)
    has_pos = num_pos > 0
    if not has_pos.any():
        return embeddings.sum() * 0.0
    sim = (z @ z.T / temperature).masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(1)
    return -(pos_log_prob[has_pos] / num_pos[has_pos]).mean()


def clip_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor, max_scale: float = 100.0
) -> torch.Tensor:
    """Symmetric InfoNCE of CLIP (Radford et al. 2021) over matched pairs ``(image_emb[i], text_emb[i])``.

    ``logit_scale`` is the caller's learnable *log* scale (CLIP initialises it at ``log(1/0.07)``); the
    scale ``exp(logit_scale)`` is clamped to ``max_scale`` (no gradient beyond it). In class-level data,
    other pairs of the same class are counted as negatives (false negatives).
    """
    img = F.normalize(image_emb.float(), dim=-1)
    txt = F.normalize(text_emb.float(), dim=-1)
    scale = logit_scale.float().exp().clamp(max=max_scale)
    logits = scale * img @ txt.T
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
