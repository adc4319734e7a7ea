"""``MODEL_CARD.md`` of a trained model, from its checkpoint and run folder: what it is, what data it saw, how it
scored (with intervals and calibration), its config, and the intended-use paragraph its authors must write."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from medfusion.data.state import find_data_state
from medfusion.deploy.inputs import Preprocessing

METRIC_NAMES = {
    "acc": "accuracy", "balanced_acc": "balanced accuracy", "macro_f1": "macro F1", "macro_auroc": "macro AUROC",
    "macro_precision": "macro precision", "macro_recall": "macro recall", "qwk": "quadratic weighted kappa",
    "grade_mae": "mean absolute grade error", "ece": "expected calibration error (15 bins)", "loss": "loss",
}  # fmt: skip
USE_TODO = (
    "_To be written by the model's authors before anyone relies on it:_ the clinical question it answers and for "
    "whom; the population, devices and sites its training data came from, and those it was not tested on; how its "
    "output is meant to be used (a second reader, triage, research only) and what a clinician must check; known "
    "failure cases; and who to contact."
)


def _short(class_path: Any) -> str:
    if isinstance(class_path, Mapping):
        class_path = class_path.get("class_path")
    return str(class_path).rsplit(".", 1)[-1] if class_path else "—"


def _metric_rows(metrics: Mapping[str, float], prefix: str = "test/") -> list[str]:
    rows = []
    for key, name in METRIC_NAMES.items():
        value = metrics.get(f"{prefix}{key}")
        if value is None:
            continue
        low, high = metrics.get(f"{prefix}{key}_ci_low"), metrics.get(f"{prefix}{key}_ci_high")
        interval = f"[{low:.3f}, {high:.3f}]" if low is not None and high is not None else "—"
        rows.append(f"| {name} (`{prefix}{key}`) | {value:.3f} | {interval} |")
    return rows


def model_card(
    checkpoint_path: str | Path,
    checkpoint: Mapping[str, Any],
    preprocessing: Preprocessing,
    temperature: float,
    parity_line: str | None = None,
) -> str:
    """The model card's Markdown. The run folder is the checkpoint's grandparent (``<run>/checkpoints/x.ckpt``):
    its ``metrics.json`` gives the test metrics and ``config.yaml`` the config, when they are there."""
    checkpoint_path = Path(checkpoint_path)
    run = checkpoint_path.resolve().parent.parent
    options = checkpoint.get("hyper_parameters") or {}
    state = find_data_state(dict(checkpoint), checkpoint_path)
    names = preprocessing.class_names
    lines = [f"# Model card: {run.name} ({checkpoint_path.name})", ""]
    lines += ["## Model", "",
              f"- {_short(options.get('_class_path'))} on the modalities "
              + ", ".join(f"`{n}` ({k})" for n, k in preprocessing.modalities.items()),
              f"- fusion {_short(options.get('fusion'))}, head {_short(options.get('head'))}, "
              f"loss {_short(options.get('loss'))}"
              + (", graded classes (lowest first)" if preprocessing.graded else ""),
              f"- saved at epoch {checkpoint.get('epoch', '?')} (counted from 0), "
              f"step {checkpoint.get('global_step', '?')}",
              ""]  # fmt: skip
    splits = state.get("split_counts") or {"train": state.get("class_counts") or []}
    lines += ["## Data", "", "| class | " + " | ".join(splits) + " |", "|---|" + "---:|" * len(splits)]
    for k, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(str(counts[k]) if k < len(counts) else "—"
                                                 for counts in splits.values()) + " |")  # fmt: skip
    lines.append("| all | " + " | ".join(str(sum(c)) for c in splits.values()) + " |")
    config_path = run / "config.yaml"
    group = state.get("group_column")
    lines += ["", f"Splits keep each `{group}` in one split." if group else "No group column: split by sample.", ""]
    metrics_path = run / "metrics.json"
    lines += ["## Evaluation", ""]
    if metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
        lines += ["| metric | test | 95% bootstrap CI |", "|---|---:|---|", *_metric_rows(metrics)]
    else:
        lines.append(f"No test metrics: {metrics_path} is missing (run `medfusion test` with this checkpoint).")
    fitted = abs(temperature - 1.0) > 1e-6
    lines += ["", "Calibration: " + (f"temperature {temperature:.3f} fitted on the validation split (applied to "
              "every output)." if fitted else "no temperature fitted (1.0).")]  # fmt: skip
    if parity_line:
        lines += ["", f"Export: ONNX, {parity_line}."]
    lines += ["", "## Intended use and limitations", "", USE_TODO, ""]
    if config_path.is_file():
        lines += ["## Config", "", "```yaml", config_path.read_text(encoding="utf-8").rstrip(), "```", ""]
    return "\n".join(lines)
