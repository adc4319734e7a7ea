"""Modality disagreement: the symmetric KL between two predictions and the fusion-loss weight built from it."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """Per-sample symmetric KL ``0.5 [KL(p||q) + KL(q||p)]`` [B] between the softmaxes of two logit tensors.

    Equals ``0.5 * sum_c (p_c - q_c)(log p_c - log q_c)``, computed from ``log_softmax`` (no log of 0).
    """
    log_p = F.log_softmax(p_logits.float(), dim=-1)
    log_q = F.log_softmax(q_logits.float(), dim=-1)
    return 0.5 * ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(-1)


def disagreement_weight(kl: torch.Tensor, step: int, warmup_steps: int = 0, clip: float = 1.0) -> torch.Tensor:
    """Per-sample weight for the fusion loss from the modality disagreement ``kl`` [B] (e.g. :func:`symmetric_kl`).

    ``w = 1 + r * min(kl, clip)`` with ``r = min(1, step / warmup_steps)`` (``r = 1`` without warm-up), so
    ``w`` lies in ``[1, 1 + clip]``: samples whose image and text predictions disagree get up to
    ``1 + clip`` times the fusion loss, agreeing ones keep weight 1, and the extra emphasis ramps in
    linearly while the unimodal heads are still unreliable. ``kl`` is detached so that the weight only
    rescales the fusion loss and never pushes the unimodal heads to agree.
    Use as ``a * L_img + b * L_text + c * (w * L_fusion_per_sample).mean()``.
    """
    if clip <= 0 or warmup_steps < 0:
        raise ValueError(f"need clip > 0 and warmup_steps >= 0, got clip={clip}, warmup_steps={warmup_steps}")
    ramp = 1.0 if warmup_steps == 0 else min(1.0, max(step, 0) / warmup_steps)
    return 1.0 + ramp * kl.detach().clamp(0.0, clip)
