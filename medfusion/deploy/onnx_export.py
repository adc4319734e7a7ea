"""ONNX export of a trained model (``torch.onnx.export`` through ``torch.export``), and its parity check against
PyTorch on real cases.

The graph takes the flat named inputs of :mod:`medfusion.deploy.inputs` (batch axis dynamic, and a text's length)
and returns ``probabilities`` ``[B, C]``: the softmax of what ``medfusion predict`` computes (post-hoc logit
adjustment, the fitted temperature and the test-time augmentation views included).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medfusion.data.errors import ConfigError
from medfusion.deploy.inputs import batch_of, input_names
from medfusion.deploy.runtime import require_onnxruntime
from medfusion.models import ClassifierModule

PARITY_TOLERANCE = 1e-4


def check_exportable(model: ClassifierModule) -> None:
    """A :class:`ConfigError` for what the flat inputs cannot carry: slice stacks, studies and saliency crops."""
    stacked = [n for n, spec in model.modality_specs.items() if spec.get("slices") or spec.get("study")]
    if stacked:
        raise ConfigError(f"The modalities {stacked} are slice stacks or studies (several images per input), which "
                          "export and the Predictor do not read yet. Fix: serve this model with `medfusion predict` "
                          "on a CSV.")  # fmt: skip
    if getattr(model, "saliency", None) is not None:
        raise ConfigError(
            "A saliency-crop model cuts its crop inside the forward pass at full resolution, which "
            "export and the Predictor do not support yet. Fix: serve it with `medfusion predict`."
        )


class ProbabilityModel(nn.Module):
    """A classifier called on the flat named inputs (in :func:`input_names` order), returning probabilities."""

    def __init__(self, model: ClassifierModule, modalities: Mapping[str, str]) -> None:
        super().__init__()
        self.model, self.modalities = model, dict(modalities)
        self.names = input_names(self.modalities)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        batch = batch_of(dict(zip(self.names, inputs, strict=True)), self.modalities)
        return self.model.evaluate(batch)[0].float().softmax(-1)


def tensors(arrays: Mapping[str, Any], names: Iterable[str]) -> tuple[torch.Tensor, ...]:
    """The arrays (or tensors) of ``names`` as CPU tensors, in order."""
    return tuple(torch.as_tensor(np.asarray(arrays[n])) if not torch.is_tensor(arrays[n]) else arrays[n].cpu()
                 for n in names)  # fmt: skip


def export_onnx(
    model: ClassifierModule, modalities: Mapping[str, str], sample: Mapping[str, Any], path: str | Path
) -> Path:
    """Write ``model`` as ONNX to ``path``, traced on ``sample`` (flat named arrays of two cases or more, texts of two
    tokens or more, so that neither axis is taken for a constant)."""
    require_onnxruntime()
    check_exportable(model)
    wrapper = ProbabilityModel(model.eval(), modalities).eval()
    names = wrapper.names
    args = tensors(sample, names)
    batch, length = torch.export.Dim("batch"), torch.export.Dim("length")
    shapes = tuple({0: batch, 1: length} if name.endswith((".input_ids", ".attention_mask")) else {0: batch}
                   for name in names)  # fmt: skip
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, args, input_names=names, output_names=["probabilities"], dynamo=True,
                                    dynamic_shapes=(shapes,), verbose=False)  # fmt: skip
    program.save(str(path))
    return path


@dataclass
class ParityReport:
    """ONNX Runtime against PyTorch on the same inputs: samples compared, the largest absolute difference of a
    probability, the share of samples with the same top class, and whether it is within ``tolerance``."""

    samples: int
    max_abs_diff: float
    top_class_agreement: float
    tolerance: float = PARITY_TOLERANCE

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps({**asdict(self), "passed": self.passed}, indent=1) + "\n", encoding="utf-8")
        return path

    def line(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (f"parity {verdict}: {self.samples} samples, max |p_onnx - p_torch| = {self.max_abs_diff:.2e} "
                f"(tolerance {self.tolerance:.0e}), same top class {self.top_class_agreement:.1%}")  # fmt: skip


def parity(
    model: ClassifierModule, modalities: Mapping[str, str], onnx_path: str | Path, batches: Iterable[Mapping[str, Any]]
) -> ParityReport:
    """Run PyTorch and ONNX Runtime on each batch of flat named arrays and compare the probabilities."""
    runtime = require_onnxruntime()
    session = runtime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapper = ProbabilityModel(model.eval(), modalities).eval()
    samples, worst, same = 0, 0.0, 0
    for arrays in batches:
        inputs = tensors(arrays, wrapper.names)
        with torch.no_grad():
            expected = wrapper(*inputs).numpy()
        got = session.run(["probabilities"], {n: t.numpy() for n, t in zip(wrapper.names, inputs, strict=True)})[0]
        samples += len(got)
        worst = max(worst, float(np.abs(got - expected).max()))
        same += int((got.argmax(1) == expected.argmax(1)).sum())
    if samples == 0:
        raise ConfigError("No case to compare the export with. Fix: give data with a test split or predict_csv.")
    return ParityReport(samples, worst, same / samples)
