"""Classification losses and auxiliary objectives.

Every classification loss is an ``nn.Module`` called as ``loss(logits [B, C], target long [B]) -> scalar``
(``reduction="none"`` gives per-sample terms [B] whose mean is that scalar, for per-sample weighting) and
takes ``class_counts`` (training-set count per class) as its *first* parameter, so a model can build
any configured loss as ``loss_cls(class_counts=counts)``; losses that do not need counts ignore them.
First, because jsonargparse treats the first parameter of a ``Callable[..., nn.Module]`` target as
supplied by the caller and hides it from the config.

Imbalance corrections must not be stacked (Menon et al. 2021): use *one* of class weights, focal
``alpha``, logit adjustment (in the loss *or* post hoc, never both) and a class-balanced sampler.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

ClassWeighting = Literal["none", "inverse", "sqrt_inverse", "effective"]
Reduction = Literal["mean", "none"]


def _reduce(per_sample: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    if reduction == "mean":
        return per_sample.mean()
    raise ValueError(f"Unknown reduction {reduction!r}; choose 'mean' or 'none'")


def _counts_tensor(class_counts: Sequence[int] | torch.Tensor | None, what: str) -> torch.Tensor:
    if class_counts is None:
        raise ValueError(
            f"{what} needs the training class counts: pass class_counts=[n_0, n_1, ...] "
            "(the medfusion models pass the datamodule's counts automatically)"
        )
    counts = torch.as_tensor(class_counts, dtype=torch.float64).flatten()
    if counts.numel() == 0 or (counts <= 0).any():
        empty = (counts <= 0).nonzero().flatten().tolist()
        raise ValueError(
            f"{what} needs a positive count for every class; classes {empty} have none in "
            f"class_counts={counts.long().tolist()}. Drop those classes or choose explicit weights."
        )
    return counts


def class_weights_from_counts(
    class_counts: Sequence[int] | torch.Tensor | None,
    scheme: Literal["inverse", "sqrt_inverse", "effective"],
    beta: float = 0.999,
) -> torch.Tensor:
    """Per-class weights normalised to mean 1: ``1/n``, ``1/sqrt(n)`` or the effective number of samples
    ``(1 - beta) / (1 - beta^n)`` (Cui et al., CVPR 2019)."""
    counts = _counts_tensor(class_counts, f"class weighting {scheme!r}")
    if scheme == "inverse":
        weights = 1.0 / counts
    elif scheme == "sqrt_inverse":
        weights = counts.rsqrt()
    elif scheme == "effective":
        weights = (1.0 - beta) / (1.0 - beta**counts)
    else:
        raise ValueError(f"Unknown class weighting {scheme!r}; choose none, inverse, sqrt_inverse or effective")
    return (weights / weights.mean()).float()


def _check_num_classes(logits: torch.Tensor, per_class: torch.Tensor | None, name: str) -> None:
    if per_class is not None and per_class.numel() != logits.shape[-1]:
        raise ValueError(f"{name} has {per_class.numel()} classes but the logits have {logits.shape[-1]}")


class CrossEntropyLoss(nn.Module):
    """Cross-entropy with optional label smoothing and class weights.

    ``class_weights``: ``"none"``, a scheme computed from ``class_counts`` (``"inverse"``,
    ``"sqrt_inverse"``, ``"effective"`` with ``effective_beta``; normalised to mean 1), or an explicit
    per-class list used as given. Weighted CE averages as ``F.cross_entropy`` does (by the sum of weights).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | None = None,
        label_smoothing: float = 0.0,
        class_weights: ClassWeighting | list[float] = "none",
        effective_beta: float = 0.999,
    ) -> None:
        super().__init__()
        self.label_smoothing = label_smoothing
        if isinstance(class_weights, str):
            weight = (
                None
                if class_weights == "none"
                else class_weights_from_counts(class_counts, class_weights, effective_beta)
            )
        else:
            weight = torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("weight", weight, persistent=False)

    def extra_repr(self) -> str:
        weights = None if self.weight is None else [round(w, 4) for w in self.weight.tolist()]
        return f"label_smoothing={self.label_smoothing}, class_weights={weights}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        """The loss; ``reduction="none"``: per-sample terms, with class weights rescaled by ``B / sum_i w[y_i]``
        so that their mean is the weighted mean."""
        _check_num_classes(logits, self.weight, "class_weights")
        weight = None if self.weight is None else self.weight.to(logits.device)
        per_sample = F.cross_entropy(
            logits.float(), target, weight=weight, label_smoothing=self.label_smoothing, reduction="none"
        )
        if weight is not None:
            per_sample = per_sample * (len(target) / weight[target].sum())
        return _reduce(per_sample, reduction)


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` (Lin et al., ICCV 2017), averaged over the batch.

    Computed from ``log_softmax`` for stability; ``gamma=0, alpha=None`` is exactly cross-entropy.
    ``alpha``: ``None``; a float (one factor for every class — the binary RetinaNet ``alpha``/``1-alpha``
    split has no multi-class analogue); a per-class list; or ``"inverse"`` (inverse class frequency from
    ``class_counts``, mean 1). Unlike weighted CE, the mean is over samples, not over weights.
    Do not combine ``alpha`` with a class-balanced sampler (double correction).
    """

    def __init__(
        self,
        class_counts: Sequence[int] | None = None,
        gamma: float = 2.0,
        alpha: float | list[float] | Literal["inverse"] | None = None,
    ) -> None:
        super().__init__()
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma
        if alpha == "inverse":
            alpha_t = class_weights_from_counts(class_counts, "inverse")
        elif isinstance(alpha, str):
            raise ValueError(f"Unknown alpha {alpha!r}; use None, a float, a per-class list or 'inverse'")
        else:
            alpha_t = None if alpha is None else torch.as_tensor(alpha, dtype=torch.float32)
        self.register_buffer("alpha", alpha_t, persistent=False)

    def extra_repr(self) -> str:
        alpha = None if self.alpha is None else [round(a, 4) for a in self.alpha.flatten().tolist()]
        return f"gamma={self.gamma}, alpha={alpha}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1).gather(-1, target.unsqueeze(-1)).squeeze(-1)
        loss = -log_p
        if self.gamma != 0:
            # 1 - p_t via expm1 is accurate near p_t = 1; the floor keeps d/dp of x^gamma finite for gamma < 1.
            one_minus_p = (-torch.expm1(log_p)).clamp_min(torch.finfo(log_p.dtype).tiny)
            loss = one_minus_p**self.gamma * loss
        if self.alpha is not None:
            if self.alpha.ndim == 0:
                loss = self.alpha.to(loss.device) * loss
            else:
                _check_num_classes(logits, self.alpha, "alpha")
                loss = self.alpha.to(loss.device)[target] * loss
        return _reduce(loss, reduction)


def _log_prior(class_counts: Sequence[int] | torch.Tensor, what: str) -> torch.Tensor:
    """``log(C * prior)``: the log prior relative to the uniform one (a constant shift, so argmax and
    softmax are unchanged, and a uniform prior gives exactly 0)."""
    counts = _counts_tensor(class_counts, what)
    return (counts.numel() * counts / counts.sum()).log().float()


def logit_adjust(logits: torch.Tensor, class_counts: Sequence[int] | torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """Post-hoc logit adjustment (Menon et al., ICLR 2021): ``logits - tau * log(prior)``; take the argmax.

    The prior is taken relative to uniform (``log(C * prior)``), so a uniform prior returns the logits unchanged.

    Use it on a model trained with a *plain* loss. Never apply it to a model trained with
    :class:`LogitAdjustedLoss` (that correction is already learnt) nor with a class-balanced sampler.
    """
    log_prior = _log_prior(class_counts, "logit_adjust").to(logits.device, logits.dtype)
    _check_num_classes(logits, log_prior, "class_counts")
    return logits - tau * log_prior


class LogitAdjustedLoss(nn.Module):
    """Logit-adjusted cross-entropy (Menon et al., ICLR 2021): CE on ``logits + tau * log(prior)``.

    ``prior`` is the training class frequency from ``class_counts`` (required). Predict with the *raw*
    logits: do not also apply :func:`logit_adjust`, and do not train with a class-balanced sampler —
    each is the same correction and stacking them over-corrects toward rare classes.
    """

    def __init__(self, class_counts: Sequence[int] | None = None, tau: float = 1.0) -> None:
        super().__init__()
        self.tau = tau
        self.register_buffer("log_prior", _log_prior(class_counts, "LogitAdjustedLoss"), persistent=False)

    def extra_repr(self) -> str:
        return f"tau={self.tau}, classes={self.log_prior.numel()}"

    def forward(self, logits: torch.Tensor, target: torch.Tensor, reduction: Reduction = "mean") -> torch.Tensor:
        _check_num_classes(logits, self.log_prior, "class_counts")
        adjusted = logits.float() + self.tau * self.log_prior.to(logits.device)
        return _reduce(F.cross_entropy(adjusted, target, reduction="none"), reduction)


LOSSES: dict[str, type[nn.Module]] = {
    "ce": CrossEntropyLoss,
    "focal": FocalLoss,
    "logit_adjusted": LogitAdjustedLoss,
}


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
