"""Sparsely gated mixture-of-experts head (Shazeer et al. 2017; Switch Transformer, Fedus et al. 2021)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.heads.base import HEADS, Head

BalanceKind = Literal["cv", "switch"]


def moe_balance_loss(probs: torch.Tensor, kind: BalanceKind = "cv") -> torch.Tensor:
    """Load-balancing loss on the *dense* router probabilities ``probs`` [B, K] (before top-k).

    ``"cv"``: ``sum_k (mean_i p_ik - 1/K)^2`` — the squared spread of expert importance; 0 for uniform use
    (proportional to Shazeer's CV² since the mean importance is always 1/K).
    ``"switch"``: ``K * sum_k f_k P_k`` with ``f_k`` the fraction of samples whose top-1 expert is ``k``
    and ``P_k`` the mean probability (Fedus et al. 2021); 1 for uniform routing, up to K when collapsed.
    """
    num_experts = probs.shape[-1]
    importance = probs.mean(0)
    if kind == "cv":
        return ((importance - 1.0 / num_experts) ** 2).sum()
    if kind == "switch":
        top1 = F.one_hot(probs.argmax(-1), num_experts).to(probs.dtype).mean(0)
        return num_experts * (top1 * importance).sum()
    raise ValueError(f"Unknown balance loss {kind!r}; choose 'cv' or 'switch'")


@HEADS.register("moe")
class MoEHead(Head):
    """Noisy top-k mixture of small MLP experts, each mapping ``[B, in_dim]`` to logits.

    Routing: ``h = W_r x`` (+ ``N(0, 1) * softplus(W_n x)`` in training when ``noisy_gating``), dense
    probabilities ``p = softmax(h)``, and each sample mixes only its ``top_k`` experts. For ``top_k > 1`` the
    selected probabilities are renormalised to sum to 1; for ``top_k = 1`` the raw probability is kept as
    the weight, because a renormalised weight is constantly 1 and the router would get no task gradient.
    All experts are evaluated densely and masked by the combine weights — simpler and faster than
    dispatching at head sizes; unselected experts contribute exactly zero.

    ``extra_losses()`` (training only) returns ``moe_balance`` (:func:`moe_balance_loss` on the dense
    probabilities, times ``balance_weight``) and, when ``z_loss_weight > 0``, ``moe_z`` (router z-loss,
    ``mean logsumexp(h)^2``, Zoph et al. 2022). ``routing()`` gives detached statistics of the last
    forward: ``load`` (fraction of samples routed to each expert; sums to ``top_k``), ``importance``
    (mean dense probability per expert) and ``combine`` (the [B, K] mixing weights).
    """

    def __init__(
        self,
        in_dim: int,
        num_classes: int,
        num_experts: int = 4,
        top_k: int = 2,
        expert_hidden: int = 128,
        noisy_gating: bool = True,
        balance: BalanceKind = "cv",
        balance_weight: float = 0.01,
        z_loss_weight: float = 0.0,
    ) -> None:
        super().__init__(in_dim, num_classes)
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, num_experts={num_experts}], got {top_k}")
        if balance not in ("cv", "switch"):
            raise ValueError(f"Unknown balance loss {balance!r}; choose 'cv' or 'switch'")
        self.num_experts = num_experts
        self.top_k = top_k
        self.noisy_gating = noisy_gating
        self.balance = balance
        self.balance_weight = balance_weight
        self.z_loss_weight = z_loss_weight
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, expert_hidden), nn.GELU(), nn.Linear(expert_hidden, num_classes))
            for _ in range(num_experts)
        )
        self.router = nn.Linear(in_dim, num_experts)
        self.noise = nn.Linear(in_dim, num_experts) if noisy_gating else None
        if self.noise is not None:  # Shazeer 2017 initialises the noise projection at zero
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)
        self._routing: dict[str, torch.Tensor] = {}
        self._extra: dict[str, torch.Tensor] = {}

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return ``(router_logits, dense_probs, combine, selected)``, all [B, K].

        ``combine`` holds the mixing weights (zero outside the top-k), ``selected`` the 0/1 top-k mask.
        """
        logits = self.router(x)
        noisy = logits
        if self.training and self.noise is not None:
            noisy = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        probs = noisy.float().softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        if self.top_k > 1:
            top_p = top_p / top_p.sum(-1, keepdim=True)
        combine = torch.zeros_like(probs).scatter(-1, top_i, top_p)
        selected = torch.zeros_like(probs).scatter(-1, top_i, 1.0)
        return logits, probs, combine, selected

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        router_logits, probs, combine, selected = self.route(x)
        expert_logits = torch.stack([expert(x) for expert in self.experts], dim=1)  # [B, K, C]
        out = torch.einsum("bk,bkc->bc", combine.to(expert_logits.dtype), expert_logits)
        self._routing = {
            "load": selected.mean(0),
            "importance": probs.mean(0).detach(),
            "combine": combine.detach(),
        }
        self._extra = {}
        if self.training:
            self._extra["moe_balance"] = self.balance_weight * moe_balance_loss(probs, self.balance)
            if self.z_loss_weight > 0:
                z = torch.logsumexp(router_logits.float(), dim=-1)
                self._extra["moe_z"] = self.z_loss_weight * (z**2).mean()
        return out

    def routing(self) -> dict[str, torch.Tensor]:
        return dict(self._routing)

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """``moe_balance`` (and ``moe_z``) of the last training forward, already weighted; empty in eval."""
        return dict(self._extra) if self.training else {}
