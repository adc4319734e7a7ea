"""Callbacks that look at a fixed set of validation samples during training: a W&B predictions table (every
modality) and interpretability figures (Grad-CAM per image, attention maps, modality weights, MoE routing)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from medfusion.callbacks.loggers import has_table_logger, log_image, log_table
from medfusion.callbacks.outputs import run_dir
from medfusion.data.tabular import FIRST_CATEGORY, MISSING, UNKNOWN, TabularFeatures, TabularPreprocessor
from medfusion.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def fixed_indices(labels: Sequence[int], num_samples: int) -> list[int]:
    """Up to ``num_samples`` dataset indices, taken round-robin over the classes (first samples of each class)."""
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    queues = [by_class[label] for label in sorted(by_class)]
    picked: list[int] = []
    depth = 0
    while len(picked) < num_samples and any(depth < len(queue) for queue in queues):
        picked += [queue[depth] for queue in queues if depth < len(queue)][: num_samples - len(picked)]
        depth += 1
    return picked


def validation_batch(trainer: L.Trainer, pl_module: L.LightningModule, num_samples: int) -> tuple[Any, dict] | None:
    """``(dataset, batch on the model's device)`` of the fixed validation samples, or None without a val set."""
    datamodule = trainer.datamodule
    dataset = getattr(datamodule, "datasets", {}).get("val")
    if dataset is None or len(dataset) == 0:
        return None
    indices = fixed_indices(dataset.labels, num_samples)
    batch = datamodule.collate([dataset[i] for i in indices])
    batch["index"] = indices
    return dataset, to_device(batch, pl_module.device)


def to_device(value: Any, device: torch.device) -> Any:
    """``value`` with every tensor in it (nested dicts of a batch too) on ``device``."""
    if torch.is_tensor(value):
        return value.to(device)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    return value


def due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether this epoch is one of every ``every_n_epochs`` (0 = never), the last epoch included."""
    if every_n_epochs <= 0 or trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


class ValidationPredictions(Callback):
    """Log a table of predictions for a fixed sample of the validation set to W&B (see :func:`prediction_table`):
    id, one image column per image modality, the text, the tabular values, true class, predicted class and each
    class's probability. Does nothing without a W&B logger.

    Args:
        num_samples: how many validation samples (taken round-robin over the classes).
        every_n_epochs: how often (0 = never); the last epoch is always logged.
    """

    def __init__(self, num_samples: int = 16, every_n_epochs: int = 1) -> None:
        self.num_samples = num_samples
        self.every_n_epochs = every_n_epochs

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not (trainer.is_global_zero and self.num_samples > 0 and due(trainer, self.every_n_epochs)):
            return
        if not has_table_logger(trainer) or trainer.state.fn != "fit":
            return
        found = validation_batch(trainer, pl_module, self.num_samples)
        if found is None:
            return
        import wandb

        dataset, batch = found
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            probs = pl_module.predict_logits(batch).float().softmax(-1).cpu()
        pl_module.train(was_training)
        columns, rows = prediction_table(
            trainer.datamodule,
            dataset,
            batch,
            probs,
            list(pl_module.class_names),
            lambda image: wandb.Image(image.permute(1, 2, 0).numpy()),
        )
        log_table(trainer, "val/predictions", columns, rows)


def prediction_table(
    datamodule: Any,
    dataset: Any,
    batch: dict[str, Any],
    probs: torch.Tensor,
    class_names: Sequence[str],
    image_cell: Callable[[torch.Tensor], Any],
) -> tuple[list[str], list[list[Any]]]:
    """The columns and rows of the predictions table of ``batch`` (samples ``batch["index"]`` of ``dataset``):
    ``id``, one column per image modality (``image_cell`` of the image back in [0, 1], ``[3, H, W]``; None where
    absent), ``text`` (the raw text) when the data has one, ``tabular`` when it has tabular inputs (see
    :func:`tabular_text`), ``true``, ``predicted`` and ``prob_<class>`` per class."""
    mean = getattr(datamodule, "mean", IMAGENET_MEAN)
    std = getattr(datamodule, "std", IMAGENET_STD)
    images = list(getattr(dataset, "images", {}))
    has_text = getattr(dataset, "texts", None) is not None
    has_tabular = getattr(dataset, "tabular", None) is not None
    present = batch.get("present") or {}
    rows = []
    for row, index in enumerate(batch["index"]):
        cells: list[Any] = [batch["id"][row]]
        for name in images:
            flags = present.get(name)
            shown = name in batch and (flags is None or bool(flags[row]))
            cells.append(image_cell(to_display(batch[name][row].cpu(), mean, std)) if shown else None)
        if has_text:
            cells.append(dataset.texts[index])
        if has_tabular:
            absent = not dataset.tabular_present[index]
            cells.append(None if absent else tabular_text(getattr(datamodule, "tabular", None), dataset.tabular, index))
        cells += [class_names[int(batch["label"][row])], class_names[int(probs[row].argmax())]]
        rows.append(cells + [round(float(p), 4) for p in probs[row]])
    columns = ["id", *images, *(["text"] if has_text else []), *(["tabular"] if has_tabular else [])]
    return [*columns, "true", "predicted", *(f"prob_{c}" for c in class_names)], rows


def tabular_text(preprocessor: TabularPreprocessor | None, features: TabularFeatures, index: int) -> str:
    """Row ``index`` of ``features`` as ``"age=54, ldh_u_l=212.3, sex=female, site=back"``: with the datamodule's
    ``preprocessor``, the raw values (numbers un-standardised with its training mean and std, to float32 precision;
    category names), ``missing`` for an empty cell and ``unknown`` for a category not seen in training; without
    one, the standardised numbers and category indices, named ``numeric_<j>`` and ``categorical_<j>``."""
    numeric, missing = features.numeric[index], features.numeric_missing[index]
    categorical = features.categorical[index]
    if preprocessor is None:
        numeric_names = [f"numeric_{j}" for j in range(len(numeric))]
        categorical_names = [f"categorical_{j}" for j in range(len(categorical))]
        values = [f"{float(x):.3g}" for x in numeric]
        categories = [str(int(c)) for c in categorical]
    else:
        numeric_names, categorical_names = preprocessor.spec.numeric, preprocessor.spec.categorical
        values = [
            f"{round(float(x) * s + m, 2):g}"
            for x, m, s in zip(numeric, preprocessor.mean, preprocessor.std, strict=True)
        ]
        special = {UNKNOWN: "unknown", MISSING: "missing"}
        categories = [
            special.get(int(c)) or preprocessor.categories[column][int(c) - FIRST_CATEGORY]
            for column, c in zip(categorical_names, categorical, strict=True)
        ]
    cells = [f"{n}={'missing' if m else v}" for n, v, m in zip(numeric_names, values, missing, strict=True)]
    cells += [f"{n}={c}" for n, c in zip(categorical_names, categories, strict=True)]
    return ", ".join(cells)


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A normalised ``[3, H, W]`` image back to ``[0, 1]``."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image.float() * std_t + mean_t).clamp(0, 1)


class Explanations(Callback):
    """Every ``every_n_epochs`` training epochs, explain a fixed set of validation samples: a Grad-CAM overlay per
    image modality, the attention maps, modality weights, MoE routing and class probabilities, one PNG per sample
    under ``<run dir>/explanations/epoch_<NNN>/``, also logged as images (W&B, TensorBoard).

    Args:
        every_n_epochs: how often (0 = never, the default: Grad-CAM costs a forward and backward per sample).
        num_samples: how many validation samples (round-robin over the classes).
    """

    def __init__(self, every_n_epochs: int = 0, num_samples: int = 4) -> None:
        self.every_n_epochs = every_n_epochs
        self.num_samples = num_samples

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not due(trainer, self.every_n_epochs) or self.num_samples <= 0:
            return
        out_dir = run_dir(trainer) / "explanations" / f"epoch_{trainer.current_epoch:03d}"  # a collective
        if not trainer.is_global_zero:
            return
        found = validation_batch(trainer, pl_module, self.num_samples)
        if found is None:
            return
        from medfusion.interpret import explain_batch, save_explanations

        datamodule = trainer.datamodule
        explanations = explain_batch(
            pl_module,
            found[1],
            tokenizer=getattr(datamodule, "tokenizer", None),
            mean=getattr(datamodule, "mean", IMAGENET_MEAN),
            std=getattr(datamodule, "std", IMAGENET_STD),
        )
        for explanation, path in zip(
            explanations, save_explanations(explanations, pl_module.class_names, out_dir), strict=True
        ):
            log_image(trainer, f"explain/{explanation.id}", path)
