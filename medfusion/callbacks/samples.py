"""Callbacks that look at a fixed set of validation samples during training: a W&B predictions table and
interpretability figures (Grad-CAM, attention maps, gate values, MoE routing)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from medfusion.callbacks.loggers import has_table_logger, log_image, log_table
from medfusion.callbacks.outputs import run_dir
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
    return dataset, {k: v.to(pl_module.device) if torch.is_tensor(v) else v for k, v in batch.items()}


def due(trainer: L.Trainer, every_n_epochs: int) -> bool:
    """Whether this epoch is one of every ``every_n_epochs`` (0 = never), the last epoch included."""
    if every_n_epochs <= 0 or trainer.sanity_checking:
        return False
    epoch = trainer.current_epoch + 1
    return epoch % every_n_epochs == 0 or epoch == trainer.max_epochs


class ValidationPredictions(Callback):
    """Log a table of predictions for a fixed sample of the validation set to W&B: id, image, text, true
    class, predicted class and each class's probability. Does nothing without a W&B logger.

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
        probs = pl_module.predict_logits(batch).float().softmax(-1).cpu()
        pl_module.train(was_training)
        names = list(pl_module.class_names)
        mean = getattr(trainer.datamodule, "mean", IMAGENET_MEAN)
        std = getattr(trainer.datamodule, "std", IMAGENET_STD)
        rows = []
        for row, index in enumerate(batch["index"]):
            image = None
            if "image" in batch:
                image = wandb.Image(to_display(batch["image"][row].cpu(), mean, std).permute(1, 2, 0).numpy())
            text = dataset.texts[index] if dataset.texts is not None else None
            rows.append(
                [batch["id"][row], image, text, names[int(batch["label"][row])], names[int(probs[row].argmax())]]
                + [round(float(p), 4) for p in probs[row]]
            )
        columns = ["id", "image", "text", "true", "predicted", *(f"prob_{c}" for c in names)]
        log_table(trainer, "val/predictions", columns, rows)


def to_display(image: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A normalised ``[3, H, W]`` image back to ``[0, 1]``."""
    mean_t = torch.as_tensor(mean, dtype=image.dtype).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=image.dtype).view(-1, 1, 1)
    return (image.float() * std_t + mean_t).clamp(0, 1)


class Explanations(Callback):
    """Every ``every_n_epochs`` training epochs, explain a fixed set of validation samples: Grad-CAM overlay,
    the text tokens' cross-attention maps, gate values, MoE routing and class probabilities, one PNG per sample
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
