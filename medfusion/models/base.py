"""The LightningModule base shared by the single-modality and multimodal classifiers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from medfusion.data.datamodule import MultimodalDataModule
from medfusion.data.errors import ConfigError, check_option
from medfusion.data.modalities import check_same_modalities
from medfusion.encoders.slices import SliceMode, SlicePooling, SliceStackEncoder
from medfusion.encoders.study import StudyEncoder, StudyPooling
from medfusion.heads import Head, MLPHead, is_ordinal
from medfusion.heads.dual_expert import DualExpertHead
from medfusion.losses import CrossEntropyLoss, LogitAdjustedLoss, logit_adjust
from medfusion.metrics import classification_metrics
from medfusion.models.feature_cache import serve_cached_features
from medfusion.models.guards import check_loss, check_weights
from medfusion.models.modalities import Specs, check_specs
from medfusion.models.optim import adamw, warmup_cosine_schedule
from medfusion.runs.checkpoints import CHECKPOINT_FORMAT, check_class_names, check_finite, plain_config
from medfusion.tta import TTA_VIEWS, average_log_probs, check_views

HeadFactory = Callable[[int, int], Head]
LossFactory = Callable[[Sequence[int] | None], nn.Module]


class ClassifierModule(L.LightningModule):
    """Steps, loss, metrics and optimizer shared by every medfusion classifier.

    Subclasses build :attr:`encoders` (an ``nn.ModuleDict``, one encoder per modality name), call
    :meth:`_build_head` with the feature size, and implement :meth:`embed` (batch -> ``[B, D]`` features).

    Args:
        num_classes: number of classes (linked from the datamodule by the CLI).
        modalities: the modality names and specs ``{name: {"kind": "image" | "text" | "tabular", ...sizes}}``
            (linked from the datamodule's ``modality_specs`` by the CLI); default: the subclass's.
        class_names: class names in label order (linked; stored in checkpoints).
        class_counts: training samples per class (linked; used by class-aware losses).
        head: the classification head, called as ``head(in_dim, num_classes)``.
        loss: the training loss, called as ``loss(class_counts)``.
        lr: learning rate of everything but the encoders.
        encoder_lr: learning rate of the encoders (lower it for pretrained ones); default ``lr``.
        weight_decay: AdamW weight decay (not applied to biases and norm weights).
        scheduler: ``"cosine"`` (per-step linear warm-up then cosine decay) or ``"constant"``.
        warmup_ratio: fraction of the training steps used for warm-up.
        freeze_encoders: keep encoder weights fixed (and their norm layers in eval mode).
        logit_adjustment: post-hoc logit adjustment ``tau`` (Menon et al. 2021; 0 = off): validation, test
            and prediction use ``logits - tau * log(prior)`` from ``class_counts``; training never does.
            Not with :class:`~medfusion.losses.LogitAdjustedLoss` nor a balanced sampler (double correction).
        tta: test-time augmentation views for ``test`` and ``predict`` (names from :data:`medfusion.tta.TTA_VIEWS`:
            identity, hflip, vflip, rot90, rot270, center_crop); their softmax outputs are averaged. Include
            ``identity`` to keep the plain view. Applied to every image modality at once; ignored without images.
        channels_last: keep the model and the image batches in channels-last memory layout, which tensor cores
            run faster (CNNs under 16-bit precision on recent GPUs); the results are unchanged.
        compile: compile the encoders, fusion and head with ``torch.compile`` (in place, so checkpoints keep
            their keys) when the Trainer sets the model up; the first steps are slower while it compiles.
        slice_mode: how an image modality read as a 2.5D stack (``data.slices``) is encoded: ``sequence`` (each
            slice by the image encoder, then across the slices) or ``channels`` (one grey channel per slice); see
            :class:`~medfusion.encoders.slices.SliceStackEncoder`.
        slice_pooling: across the slices in ``sequence`` mode: ``transformer`` (a Transformer layer, then gated
            attention pooling) or ``attention`` (the pooling alone).
        study_pooling: how a study's images (``data.study_column``) are pooled: ``mean``, ``max`` or gated
            ``attention`` (Ilse et al. 2018); see :class:`~medfusion.encoders.study.StudyEncoder`.
        graded: the classes are grades in ``class_names`` order: validation and test add quadratic weighted kappa
            (``qwk``) and the mean absolute grade error (``grade_mae``), bootstrap intervals include them, and
            ``predictions.csv`` the risk ``P(y >= k)`` per grade. Default: on with an ordinal head or loss
            (CORAL, CORN), off otherwise.

    The ``temperature`` buffer divides the evaluation logits (1 until temperature scaling sets it; see
    :class:`~medfusion.callbacks.Evaluation`).

    Data counts are logged too: the datamodule's ``data_report`` (truncated texts, missing modalities) as
    ``data/<key>`` to every logger when a fit or test starts, and with ``on_bad_image: skip`` the samples
    replaced for an unreadable image as ``train/skipped_images``, ``val/skipped_images`` and
    ``<test prefix>skipped_images`` (sums per epoch).
    """

    # Sub-modules on the main path: their extra losses keep their names; others' get the module name as prefix.
    _main_modules: tuple[str, ...] = ("head", "fusion")

    # the modalities when none are given (a model built in Python without data)
    default_modalities: ClassVar[Specs] = {}

    def __init__(
        self,
        num_classes: int,
        modalities: dict[str, dict[str, Any]] | None = None,
        class_names: list[str] | None = None,
        class_counts: list[int] | None = None,
        head: HeadFactory = MLPHead,
        loss: LossFactory = CrossEntropyLoss,
        lr: float = 1e-3,
        encoder_lr: float | None = None,
        weight_decay: float = 0.01,
        scheduler: Literal["cosine", "constant"] = "cosine",
        warmup_ratio: float = 0.05,
        freeze_encoders: bool = False,
        logit_adjustment: float = 0.0,
        tta: list[str] | None = None,
        channels_last: bool = False,
        compile: bool = False,
        slice_mode: SliceMode = "sequence",
        slice_pooling: SlicePooling = "transformer",
        study_pooling: StudyPooling = "attention",
        graded: bool | None = None,
    ) -> None:
        super().__init__()
        check_option("model.lr", lr, lr > 0, "a positive number")
        check_option("model.encoder_lr", encoder_lr, encoder_lr is None or encoder_lr > 0, "a positive number or null")
        check_option("model.weight_decay", weight_decay, weight_decay >= 0, "0 or more")
        check_option("model.warmup_ratio", warmup_ratio, 0 <= warmup_ratio < 1, "in [0, 1)")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class_names for num_classes={num_classes}")
        self.save_hyperparameters()
        self.modality_specs: Specs = check_specs(modalities or self.default_modalities)
        self.encoders = nn.ModuleDict()  # filled by the subclass, one per modality name
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self._head_factory = head
        self._slice_factory = partial(SliceStackEncoder, mode=slice_mode, pooling=slice_pooling)
        self._study_factory = partial(StudyEncoder, pooling=study_pooling)
        self.criterion = loss(class_counts)
        if logit_adjustment < 0:
            raise ValueError(f"logit_adjustment (tau) must be >= 0, got {logit_adjustment}")
        if logit_adjustment > 0:
            if class_counts is None:
                raise ValueError("logit_adjustment needs the training class_counts (linked from the datamodule)")
            if isinstance(self.criterion, LogitAdjustedLoss):
                raise ValueError(
                    "logit_adjustment (post hoc) with LogitAdjustedLoss corrects for the prior twice: "
                    "use one of them (Menon et al. 2021): set logit_adjustment: 0 or train with a plain loss"
                )
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = classification_metrics(num_classes, "val/")
        self.graded = bool(graded)  # settled with the head (_build_head)
        # Sample-weighted means gathered across ranks (sync_dist would average per-rank means).
        self.val_loss = MeanMetric()
        self.test_metrics = nn.ModuleList()
        self.test_losses = nn.ModuleList()
        self.test_prefixes: list[str] = []
        self.tta = check_views(tta or [])
        self.register_buffer("temperature", torch.ones(()))
        self._pretrained_loaded = False

    # ----------------------------------------------------------------------------- model
    def embed(self, batch: dict[str, Any]) -> torch.Tensor:
        """Features ``[B, D]`` of a batch, before the head."""
        raise NotImplementedError

    def feature_encoders(self) -> dict[str, nn.Module]:
        """The encoders by modality name, whose outputs a feature cache may hold."""
        return dict(self.encoders.items())

    @property
    def batch_modalities(self) -> list[str]:
        """The modality names the model reads from a batch (its encoders', but those it derives itself)."""
        return list(self.encoders)

    @property
    def image_modalities(self) -> list[str]:
        """The names of the image modalities (test-time augmentation, Grad-CAM)."""
        return [name for name, spec in self.modality_specs.items() if spec["kind"] == "image"]

    def feature_fields(self) -> dict[str, bool]:
        """Which encoder outputs the model uses besides ``pooled``: ``{"tokens": ..., "levels": ...}``."""
        return {"tokens": False, "levels": False}

    def _build_head(self, in_dim: int, head: Head | None = None) -> None:
        """Set the head (``head``, or the configured one on ``in_dim`` features), then what depends on it: whether
        the classes are graded (:attr:`graded`) and so the validation metrics."""
        self.head = head if head is not None else self._head_factory(in_dim, self.num_classes)
        ordinal = is_ordinal(self.head) or bool(getattr(self.criterion, "ordinal", False))
        self.graded = ordinal if self.hparams.graded is None else self.hparams.graded
        if self.graded:
            self.val_metrics = classification_metrics(self.num_classes, "val/", graded=True)
        self._freeze_if_asked()

    def _freeze_if_asked(self) -> None:
        """With ``freeze_encoders``, fix the encoders' weights and put them in eval mode."""
        if self.hparams.freeze_encoders:
            # eval from the start: Lightning restores each submodule's mode as it was before validation, which
            # would put frozen encoders back in training mode (BatchNorm statistics, dropout) past train() below
            for encoder in self.encoders.values():
                encoder.requires_grad_(False).eval()

    def forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Logits ``[B, num_classes]`` of a batch dict."""
        return self.head(self.embed(batch))

    def predict_logits(self, batch: dict[str, Any]) -> torch.Tensor:
        """The logits evaluation and prediction use: ``forward``, post-hoc adjusted when ``logit_adjustment > 0``,
        divided by the fitted ``temperature``."""
        return self.calibrate(self(batch))

    def calibrate(self, logits: torch.Tensor) -> torch.Tensor:
        """Post-hoc logit adjustment (when ``logit_adjustment > 0``), then division by ``temperature``."""
        tau = self.hparams.logit_adjustment
        if tau > 0:
            logits = logit_adjust(logits, self.hparams.class_counts, tau)
        return logits / self.temperature

    def evaluate(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits, features)`` for test and predict: the calibrated logits, averaged over the ``tta`` views
        (as ``log(mean softmax)``) when configured, and the plain view's features ``[B, D]`` before the head."""
        features = self.embed(batch)
        logits = self.calibrate(self.head(features))
        images = [name for name in self.image_modalities if isinstance(batch.get(name), torch.Tensor)]  # not studies
        if not self.tta or not images:
            return logits, features
        views = [
            logits
            if view == "identity"
            else self.predict_logits({**batch, **{name: TTA_VIEWS[view](batch[name]) for name in images}})
            for view in self.tta
        ]
        return average_log_probs([v.float().log_softmax(-1) for v in views]), features

    def train(self, mode: bool = True) -> ClassifierModule:
        super().train(mode)
        if self.hparams.freeze_encoders:
            for encoder in self.encoders.values():
                encoder.eval()
        return self

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """Auxiliary losses of the last forward from every sub-module that has them (fusion, head), also inside a
        per-modality ``ModuleDict`` (the auxiliary heads: ``unimodal_heads_image_moe_balance``)."""
        losses: dict[str, torch.Tensor] = {}
        for name, module in self.named_children():
            members = module.items() if isinstance(module, nn.ModuleDict) else [("", module)]
            for key, member in members:
                if hasattr(member, "extra_losses"):
                    prefix = "" if name in self._main_modules else f"{name}_{key}_" if key else f"{name}_"
                    losses.update({prefix + loss: value for loss, value in member.extra_losses().items()})
        return losses

    def class_aware_corrections(self) -> list[str]:
        """The imbalance corrections configured in the loss and at inference (for the double-correction warning)."""
        found = []
        if getattr(self.criterion, "weight", None) is not None:
            found.append("class weights in the loss")
        alpha = getattr(self.criterion, "alpha", None)
        if isinstance(alpha, torch.Tensor) and alpha.ndim > 0:
            found.append("per-class focal alpha")
        if isinstance(self.criterion, LogitAdjustedLoss):
            found.append("LogitAdjustedLoss")
        if self.hparams.logit_adjustment > 0:
            found.append("post-hoc logit_adjustment")
        return found

    # ----------------------------------------------------------------------------- lifecycle
    def configure_model(self) -> None:
        """The GPU options: channels-last memory layout and ``torch.compile`` of every sub-module on the path."""
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)
            for module in self.modules():
                if hasattr(module, "channels_last"):  # image encoders convert their input batch
                    module.channels_last = True
        if self.hparams.compile:
            for module in (*self.encoders.values(), getattr(self, "fusion", None), self.head):
                if module is not None and module._compiled_call_impl is None:
                    module.compile()

    def setup(self, stage: str) -> None:
        # With data.feature_cache the loaders serve the frozen encoders' cached features (Lightning builds them after
        # this hook and the datamodule's setup): refuse what caching excludes before any weights load.
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, MultimodalDataModule):
            check_same_modalities(datamodule.modalities, self.batch_modalities)
            if self.graded and getattr(datamodule, "class_order_sorted", False):
                rank_zero_warn(
                    f"The classes are graded in the order {self.class_names}, the labels sorted as strings, since "
                    "data.class_names is not set. Fix: set data.class_names to the grades from lowest to highest."
                )
            if datamodule.feature_cache is not None:
                datamodule.use_datasets(serve_cached_features(self, datamodule))
        # Pretrained weights load when a fit starts, never when a model is rebuilt from a checkpoint.
        if stage == "fit" and not self._pretrained_loaded:
            for encoder in self.encoders.values():
                encoder.load_pretrained()
            self._pretrained_loaded = True

    def teardown(self, stage: str) -> None:
        # the datamodule may outlive this run: it must not keep serving this model's cached features
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, MultimodalDataModule):
            datamodule.use_datasets(None)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Mark the checkpoint with its format, class names and modalities (what the data needs to use it, the
        tokenizer and tabular statistics, is the datamodule's ``state_dict``, which Lightning stores beside)."""
        # a model built in Python holds classes and partials there: plain values keep the file weights_only-safe
        check_weights(self, checkpoint.get("state_dict", {}))
        checkpoint["hyper_parameters"] = plain_config(checkpoint.get("hyper_parameters", {}))
        checkpoint["medfusion"] = {
            "format": CHECKPOINT_FORMAT,
            "class_names": list(self.class_names),
            "class_counts": self.hparams.class_counts,
            "modalities": {name: spec["kind"] for name, spec in self.modality_specs.items()},
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint trained on other classes (naming both lists) or with non-finite weights (its format
        was checked when it was read)."""
        where = self._trainer.ckpt_path if self._trainer is not None and self._trainer.ckpt_path else "The checkpoint"
        check_finite(checkpoint.get("state_dict", {}), str(where))
        trained = checkpoint.get("medfusion", {}).get("class_names") or checkpoint.get("hyper_parameters", {}).get(
            "class_names"
        )
        if trained is not None:
            check_class_names(trained, self.class_names, self._trainer.ckpt_path if self._trainer else None)
        modalities = checkpoint.get("medfusion", {}).get("modalities")
        if modalities is not None and dict(modalities) != {n: s["kind"] for n, s in self.modality_specs.items()}:
            raise ConfigError(
                f"{where} was trained on the modalities {dict(modalities)} but this model has "
                f"{ {n: s['kind'] for n, s in self.modality_specs.items()} }. Fix: use data with the checkpoint's "
                "modalities (data.modalities and their columns), or train a new model."
            )
        self._pretrained_loaded = True

    def log_data_report(self) -> None:
        """Log the datamodule's ``data_report`` counts (truncated texts, missing modalities) as ``data/<key>`` to
        every logger, once per fit or test; nothing when the datamodule has no report."""
        report = getattr(self.trainer.datamodule, "data_report", None)
        if not report:
            return
        metrics = {f"data/{key}": float(value) for key, value in report.items()}
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":  # subnormal floats (tiny optimizer states, spline bases) cost ~10-100x on CPUs
            torch.set_flush_denormal(True)
        self.log_data_report()
        if getattr(self.trainer.datamodule, "sampler", None) != "balanced":
            return
        corrections = self.class_aware_corrections()
        if corrections:
            rank_zero_warn(
                f"A class-balanced sampler together with {', '.join(corrections)} corrects for the class "
                "imbalance twice and over-favours rare classes; use one correction (data.sampler: shuffle, "
                "or a plain loss without post-hoc adjustment)."
            )

    def on_fit_end(self) -> None:
        torch.set_flush_denormal(False)  # the process default again (a notebook's later work is unchanged)

    def on_test_start(self) -> None:
        self.log_data_report()
        names = getattr(self.trainer.datamodule, "test_set_names", None) or ["test"]
        loaders = self.trainer.test_dataloaders
        count = len(loaders) if isinstance(loaders, Sequence) else 1
        names = names if len(names) == count else ["test", *(f"{i}" for i in range(1, count))]
        self.test_prefixes = ["test/" if n == "test" else f"test_{n}/" for n in names]
        self.test_metrics = nn.ModuleList(
            [classification_metrics(self.num_classes, p, self.graded) for p in self.test_prefixes]
        ).to(self.device)
        self.test_losses = nn.ModuleList([MeanMetric() for _ in self.test_prefixes]).to(self.device)

    # ----------------------------------------------------------------------------- steps
    def training_objective(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(logits, loss, terms)`` of a training batch: the classification logits, the training loss
        before the sub-modules' extra losses, and the named terms to log. Subclasses add objectives here."""
        logits = self(batch)
        return logits, self.criterion(logits, batch["label"]), {}

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, loss, terms = self.training_objective(batch)
        size = len(batch["label"])
        extra = self.extra_losses()
        loss = sum(extra.values(), loss)
        check_loss(self, loss, batch)
        if self.step_values_shown():
            for name, value in {**terms, **extra, "loss": loss}.items():
                self.log(f"train/{name}", value, prog_bar=name == "loss", batch_size=size)
        for name, value in self.routing_stats().items():
            self.log(f"train/{name}", value, on_step=False, on_epoch=True, batch_size=size)
        self.train_acc.update(logits.detach(), batch["label"])
        self.log_skipped_images(batch, "train/")
        return loss

    def step_values_shown(self) -> bool:
        """Whether this training step's per-step values reach anyone: a progress bar; the loggers, which Lightning
        writes every ``log_every_n_steps``; or, on an epoch's (or the fit's) last step, ``callback_metrics`` as
        monitors read them at the epoch's end. A ``self.log`` call costs ~1 ms (Lightning moves its result state
        each time), a third of a small cached model's step, and the other steps' values were never written."""
        trainer = self._trainer
        if trainer is None or trainer.progress_bar_callback is not None:
            return True
        loop = trainer.fit_loop.epoch_loop
        last = loop.batch_progress.is_last_batch or trainer.should_stop or trainer.global_step + 1 == trainer.max_steps
        connector = getattr(trainer, "_logger_connector", None)  # Lightning's own test (private; True if it moves)
        return last or bool(getattr(connector, "should_update_logs", True))

    # Metric objects are updated per batch and logged once per epoch, computed (torchmetrics gathers them over DDP
    # ranks): logging a Metric object in every step costs Lightning ~1 ms per call, most of a small model's step.
    def on_train_epoch_end(self) -> None:
        self.log("train/acc", self.train_acc.compute(), sync_dist=True)  # the same on every rank already
        self.train_acc.reset()

    def on_validation_epoch_end(self) -> None:
        self.log("val/loss", self.val_loss.compute(), prog_bar=True, sync_dist=True)
        self.log_dict(self.val_metrics.compute(), sync_dist=True)
        self.val_loss.reset()
        self.val_metrics.reset()

    def routing_stats(self) -> dict[str, torch.Tensor]:
        """Detached statistics of the last forward from the fusion's and head's hooks: MoE expert load and
        importance (``moe_load_<k>``, ``moe_importance_<k>``) and the mean weight of each fusion input
        (``fusion_weight_<name>``, for fusions that weigh their inputs: gated, hierarchical) and the dual expert's
        mean gate (``dual_expert_gate_<name>``)."""
        stats: dict[str, torch.Tensor] = {}
        routing = self.head.routing()
        if isinstance(self.head, DualExpertHead) and "combine" in routing:
            for name, column in zip(self.head.names, routing["combine"].float().mean(dim=0), strict=True):
                stats[f"dual_expert_gate_{name}"] = column
        for kind in ("load", "importance"):
            for k, value in enumerate(routing.get(kind, [])):
                stats[f"moe_{kind}_{k}"] = value.detach()
        fusion = getattr(self, "fusion", None)
        weights = fusion.modality_weights() if fusion is not None else None
        if weights is not None:
            for name, column in zip(fusion.names, weights.detach().float().mean(dim=0), strict=True):
                stats[f"fusion_weight_{name}"] = column
        return stats

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits = self.predict_logits(batch)
        size = len(batch["label"])
        self.val_loss.update(self.criterion(logits, batch["label"]), weight=size)
        self.val_metrics.update(logits.float().softmax(-1), batch["label"])
        self.log_skipped_images(batch, "val/")

    def log_skipped_images(self, batch: dict[str, Any], prefix: str) -> None:
        """Log ``<prefix>skipped_images``, the epoch's sum (over ranks too) of the samples whose unreadable image
        was replaced (the batch's ``replaced`` count, present with the datamodule's ``on_bad_image: skip``)."""
        if "replaced" in batch:
            value = torch.as_tensor(batch["replaced"], dtype=torch.float32, device=self.device)
            self.log(
                f"{prefix}skipped_images",
                value,
                on_step=False,
                on_epoch=True,
                reduce_fx="sum",
                sync_dist=True,
                batch_size=len(batch["label"]),
                add_dataloader_idx=False,
            )

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """Update the test set's metrics; return ``id``, ``label``, ``probs`` and ``features`` for callbacks."""
        logits, features = self.evaluate(batch)
        probs = logits.float().softmax(-1)
        size = len(batch["label"])
        metrics, loss = self.test_metrics[dataloader_idx], self.test_losses[dataloader_idx]
        metrics.update(probs, batch["label"])
        loss.update(self.criterion(logits, batch["label"]), weight=size)
        prefix = self.test_prefixes[dataloader_idx]
        self.log(f"{prefix}loss", loss, batch_size=size, add_dataloader_idx=False)
        self.log_dict(metrics, batch_size=size, add_dataloader_idx=False)
        self.log_skipped_images(batch, prefix)
        return {"id": batch["id"], "label": batch["label"], "probs": probs, "features": features.detach()}

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        """``id``, ``probs`` and ``error`` (per sample: why it has no prediction, e.g. an unreadable image; None)."""
        probs = self.evaluate(batch)[0].float().softmax(dim=-1)
        return {"id": batch["id"], "probs": probs, "error": batch.get("error") or [None] * len(batch["id"])}

    # ----------------------------------------------------------------------------- optimizer
    def configure_optimizers(self) -> Any:
        """AdamW over two learning rates (``encoder_lr`` for the encoders, ``lr`` for the rest), without weight
        decay on biases and norm weights, with the per-step warm-up and cosine schedule unless ``constant``."""
        hp = self.hparams
        encoders = [p for encoder in self.encoders.values() for p in encoder.parameters()]
        optimizer = adamw(self, encoders, encoder_lr=hp.encoder_lr or hp.lr, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.scheduler == "constant":
            return optimizer
        return {
            "optimizer": optimizer,
            "lr_scheduler": warmup_cosine_schedule(optimizer, self.trainer, hp.warmup_ratio),
        }
