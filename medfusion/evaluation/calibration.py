"""Post-hoc calibration: temperature scaling (Guo et al., 2017) and expected calibration error."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.functional.classification import multiclass_calibration_error

from medfusion.evaluation.bootstrap import _validate_predictions


def fit_temperature(logits: Tensor, labels: Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 that minimises the NLL of ``softmax(logits / T)`` on (logits, labels).

    Optimises log T with L-BFGS (strong Wolfe line search) in float64 from T = 1, on detached CPU copies;
    deterministic. Safe to call inside ``torch.no_grad`` / ``torch.inference_mode`` (e.g. from a test hook).
    """
    _validate_predictions(logits, labels)
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    with torch.inference_mode(False), torch.enable_grad():
        # clone(): tensors made in inference mode cannot take part in autograd
        logits = logits.detach().cpu().to(torch.float64).clone()
        labels = labels.detach().cpu().long().clone()
        log_temperature = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([log_temperature], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(logits / log_temperature.exp(), labels)
            loss.backward()
            return loss

        optimizer.step(closure)
    return float(log_temperature.detach().exp())


def expected_calibration_error(probs: Tensor, labels: Tensor, num_bins: int = 15) -> float:
    """Top-label ECE with ``num_bins`` equal-width confidence bins (torchmetrics' multiclass L1 calibration error)."""
    _validate_predictions(probs, labels)
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}")
    error = multiclass_calibration_error(
        probs.detach(), labels.detach().long(), num_classes=probs.shape[1], n_bins=num_bins, norm="l1"
    )
    return float(error)
