"""Calling a trained model on cases from Python: no CLI, config, datamodule or CSV.

``Predictor.from_checkpoint(path)`` runs the PyTorch model (explanations on request); ``Predictor.from_export(dir)``
runs ``model.onnx`` on ONNX Runtime with the exported preprocessing, without importing Lightning or the model code.
Both prepare a case with :class:`~medfusion.deploy.inputs.Preprocessing` and give the same result.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medfusion.data.errors import ConfigError
from medfusion.deploy.inputs import Preprocessing, input_names

Runner = Callable[[dict[str, np.ndarray]], np.ndarray]


@dataclass
class Prediction:
    """One case's result: the top class, the probability of each class, for graded classes the risk
    ``P(y >= grade)`` of each grade above the lowest, and the explanation when asked for."""

    label: str
    probabilities: dict[str, float]
    risks: dict[str, float] | None = None
    explanation: Any = None


class Predictor:
    """A trained model with its preprocessing, called on cases.

    A case is ``{modality name: value}`` (the names are the model's, e.g. ``image``, ``text``, ``tabular``): an
    image as a file path, PIL image or ``[H, W, 3]`` uint8 array, a text as a string, tabular values as
    ``{column: value}`` (None where missing), None or no key for a modality the case lacks. Bad input is a
    :class:`~medfusion.data.DataError` naming the case, the modality and the fix.

    Build with :meth:`from_checkpoint` or :meth:`from_export`.
    """

    def __init__(self, preprocessing: Preprocessing, run: Runner, model: Any = None) -> None:
        self.preprocessing, self._run, self.model = preprocessing, run, model

    @property
    def class_names(self) -> list[str]:
        return list(self.preprocessing.class_names)

    @property
    def modalities(self) -> dict[str, str]:
        """The inputs a case may have, ``{name: kind}``."""
        return dict(self.preprocessing.modalities)

    @classmethod
    def from_checkpoint(
        cls, path: str | Path, trusted: Sequence[str] = ("medfusion.",), device: str = "cpu"
    ) -> Predictor:
        """The PyTorch model of a local checkpoint (read weights-only; only classes under ``trusted`` are built,
        see :func:`~medfusion.deploy.rebuild.model_from_checkpoint`) on ``device``."""
        import torch

        from medfusion.data.state import find_data_state
        from medfusion.deploy.onnx_export import ProbabilityModel, check_exportable, tensors
        from medfusion.deploy.rebuild import model_from_checkpoint

        model, checkpoint = model_from_checkpoint(path, trusted)
        check_exportable(model)
        preprocessing = Preprocessing.from_data_state(find_data_state(checkpoint, path), model.graded, path)
        wrapper = ProbabilityModel(model.to(device), preprocessing.modalities).eval()

        def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
            with torch.no_grad():
                inputs = [t.to(device) for t in tensors(arrays, wrapper.names)]
                return wrapper(*inputs).cpu().numpy()

        return cls(preprocessing, run, model)

    @classmethod
    def from_export(cls, folder: str | Path) -> Predictor:
        """``model.onnx`` of a ``medfusion export`` folder on ONNX Runtime (CPU), with its preprocessing files."""
        from medfusion.deploy.runtime import require_onnxruntime

        runtime = require_onnxruntime()
        preprocessing = Preprocessing.load(folder)
        model_path = Path(folder) / "model.onnx"
        if not model_path.is_file():
            raise ConfigError(f"{folder} holds no model.onnx. Fix: name the folder `medfusion export --out` wrote.")
        session = runtime.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
        names = input_names(preprocessing.modalities)

        def run(arrays: dict[str, np.ndarray]) -> np.ndarray:
            return session.run(["probabilities"], {name: arrays[name] for name in names})[0]

        return cls(preprocessing, run)

    # ----------------------------------------------------------------------------- predicting
    def predict(self, explain: bool = False, **case: Any) -> Prediction:
        """The prediction for one case, its modalities as keywords: ``predict(image="a.png", text="...")``."""
        return self.predict_batch([case], explain=explain)[0]

    def predict_batch(
        self, cases: Sequence[Mapping[str, Any]], batch_size: int = 32, explain: bool = False
    ) -> list[Prediction]:
        """The predictions for ``cases`` (see the class docstring), in order, ``batch_size`` at a time; with
        ``explain`` each carries its :class:`~medfusion.interpret.Explanation` (PyTorch model only)."""
        if explain and self.model is None:
            raise ConfigError("Explanations need the PyTorch model. Fix: use Predictor.from_checkpoint(...).")
        results: list[Prediction] = []
        for start in range(0, len(cases), batch_size) if cases else [0]:
            arrays = self.preprocessing.arrays(list(cases[start : start + batch_size]))
            probabilities = self._run(arrays)
            explanations = self._explain(arrays) if explain else [None] * len(probabilities)
            results += [self._prediction(p, e) for p, e in zip(probabilities, explanations, strict=True)]
        return results

    def predict_frame(
        self, frame: pd.DataFrame, columns: Mapping[str, str] | None = None, batch_size: int = 32
    ) -> pd.DataFrame:
        """``frame`` with ``prediction``, ``prob_<class>`` (and ``risk_ge_<grade>``) columns added: each row one
        case, an image or text modality read from the column of its name (or ``columns[name]``), a tabular one
        from its columns. An empty cell is a missing modality."""
        columns = dict(columns or {})
        tabular = self.preprocessing.tabular.spec.columns if self.preprocessing.tabular else []
        wanted = [columns.get(n, n) for n, kind in self.modalities.items() if kind != "tabular"] + tabular
        absent = [c for c in wanted if c not in frame.columns]
        if absent:
            raise ConfigError(f"The frame has no column(s) {absent} (its columns: {list(frame.columns)}). Fix: add "
                              "them, or map modality names to columns with columns={name: column}.")  # fmt: skip
        cases = []
        for _, row in frame.iterrows():
            case: dict[str, Any] = {}
            for name, kind in self.modalities.items():
                if kind == "tabular":
                    values = {c: row[c] for c in tabular}
                    case[name] = None if all(_empty(v) for v in values.values()) else values
                else:
                    value = row[columns.get(name, name)]
                    case[name] = None if _empty(value) else value
            cases.append(case)
        predictions = self.predict_batch(cases, batch_size)
        out = frame.copy()
        out["prediction"] = [p.label for p in predictions]
        for name in self.class_names:
            out[f"prob_{name}"] = [p.probabilities[name] for p in predictions]
        if self.preprocessing.graded:
            for name in self.class_names[1:]:
                out[f"risk_ge_{name}"] = [p.risks[name] for p in predictions]
        return out

    def _prediction(self, probabilities: np.ndarray, explanation: Any) -> Prediction:
        names = self.class_names
        risks = None
        if self.preprocessing.graded:
            tail = np.cumsum(probabilities[::-1])[::-1]
            risks = {name: float(min(tail[k], 1.0)) for k, name in enumerate(names) if k > 0}
        probs = {name: float(p) for name, p in zip(names, probabilities, strict=True)}
        return Prediction(names[int(np.argmax(probabilities))], probs, risks, explanation)

    def _explain(self, arrays: dict[str, np.ndarray]) -> list[Any]:
        import torch

        from medfusion.deploy.inputs import batch_of
        from medfusion.interpret import explain_batch

        device = next(self.model.parameters()).device
        batch = batch_of({k: torch.as_tensor(v).to(device) for k, v in arrays.items()}, self.modalities)
        batch["id"] = [f"case {i}" for i in range(len(next(iter(arrays.values()))))]
        p = self.preprocessing
        return explain_batch(self.model, batch, p.tokenizer, p.mean or (0.0,) * 3, p.std or (1.0,) * 3)


def _empty(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value)) or (isinstance(value, str) and not value)
