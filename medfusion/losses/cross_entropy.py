"""Cross-entropy with label smoothing and class weights (registered as ``ce``)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medfusion.losses.base import (
    LOSSES,
    ClassWeighting,
    Reduction,
    _check_num_classes,
    _reduce,
    class_weights_from_counts,
)


@LOSSES.register("ce")
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
