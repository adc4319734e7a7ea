"""The uncertainty-gated dual expert: two heads on two feature sets, each sample trusting the more certain one."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from medfusion.heads.base import Head

ExpertFactory = Callable[[int, int], Head]


def predictive_entropy(logits: torch.Tensor) -> torch.Tensor:
    """The entropy (nats) of ``softmax(logits)`` per row: ``[B, C] -> [B]``, in ``[0, log C]``."""
    log_probs = logits.float().log_softmax(-1)
    return -(log_probs.exp() * log_probs).sum(-1)


def entropy_gate(logits: Sequence[torch.Tensor], temperature: float = 1.0) -> torch.Tensor:
    """Per sample, the weight of each expert ``[B, K]``: ``softmax(-H_k / temperature)`` over the experts'
    predictive entropies ``H_k``, so the more certain expert (lower entropy) weighs more; rows sum to 1."""
    entropies = torch.stack([predictive_entropy(x) for x in logits], dim=-1)
    return (-entropies / temperature).softmax(-1)


class DualExpertHead(Head):
    """Two experts, each a head on its own part of the input (``x = [first | second]``, sizes ``in_dims``), mixed
    per sample by their predictive entropies (:func:`entropy_gate`): ``p = g p_first + (1 - g) p_second``, and the
    logits are ``log p``. The gate reads detached entropies: experts cannot win weight by growing overconfident,
    and each is trained by its own loss beside the mixture's (see ``MultimodalClassifier(dual_expert=...)``).

    ``expert_logits`` holds the last forward's per-expert logits, ``routing()`` its ``combine`` weights
    ``[B, 2]`` (the gate, for logging and ``medfusion explain``).

    Args:
        in_dims: the feature sizes of the two experts' inputs, in the order they are concatenated.
        num_classes: the number of classes.
        expert: builds each expert as ``expert(in_dim, num_classes)`` (any medfusion head).
        names: what the two experts look at (shown in figures and logged metric names).
        temperature: the gate's softness; lower trusts the more certain expert more sharply.
    """

    routing_title = "dual-expert gate"

    def __init__(
        self,
        in_dims: tuple[int, int],
        num_classes: int,
        expert: ExpertFactory,
        names: tuple[str, str] = ("first", "second"),
        temperature: float = 1.0,
    ) -> None:
        if len(in_dims) != 2 or len(names) != 2:
            raise ValueError(f"a dual expert has two inputs, got in_dims {in_dims} and names {names}")
        if temperature <= 0 or not math.isfinite(temperature):
            raise ValueError(f"the dual-expert gate temperature must be a positive number, got {temperature}")
        super().__init__(sum(in_dims), num_classes)
        self.in_dims, self.names, self.temperature = tuple(in_dims), tuple(names), temperature
        self.experts = nn.ModuleList([expert(dim, num_classes) for dim in in_dims])
        self.expert_logits: list[torch.Tensor] = []
        self._gate: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = x.split(list(self.in_dims), dim=-1)
        self.expert_logits = [expert(part) for expert, part in zip(self.experts, parts, strict=True)]
        gate = entropy_gate([logits.detach() for logits in self.expert_logits], self.temperature)
        self._gate = gate
        probs = torch.stack([logits.float().softmax(-1) for logits in self.expert_logits], dim=1)  # [B, 2, C]
        mixed = (gate.unsqueeze(-1) * probs).sum(1)
        return mixed.clamp_min(torch.finfo(mixed.dtype).tiny).log().to(x.dtype)

    def extra_losses(self) -> dict[str, torch.Tensor]:
        losses: dict[str, torch.Tensor] = {}
        for expert in self.experts:
            losses |= expert.extra_losses()
        return losses

    def routing(self) -> dict[str, torch.Tensor]:
        if self._gate is None:
            return {}
        return {"combine": self._gate.detach()}
