"""The ``medfusion`` command: LightningCLI's fit | validate | test | predict, plus ``demo-data``, ``explain`` and
``compare``."""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import yaml
from jsonargparse import Namespace
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medfusion.callbacks import (
    Evaluation,
    Explanations,
    MetricsJSON,
    PredictionWriter,
    RetrievedPassages,
    ValidationPredictions,
)
from medfusion.data import MultimodalDataModule, MultimodalDataset
from medfusion.data.demo import default_cache_dir
from medfusion.data.errors import ConfigError, DataError, check_option
from medfusion.data.transforms import eval_transform
from medfusion.models import ClassifierModule, DivergedError
from medfusion.runs.checkpoints import CheckpointError, fetch_remote, is_remote
from medfusion.runs.resume import SafeCheckpointIO, resolve_resume

if TYPE_CHECKING:
    from medfusion.interpret.explain import CropBoxes

# Errors about the user's input, printed as themselves (no traceback) with exit status 2.
INPUT_ERRORS = (DataError, ConfigError, CheckpointError)


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"init_args": {"lr": 1}}}`` -> ``{"model.init_args.lr": 1}`` (lists kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Save ``config.yaml`` in the run dir (as LightningCLI does) and send the whole config to W&B's run config."""

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if wandb_loggers:
            config = flatten(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
            for logger in wandb_loggers:
                logger.experiment.config.update(config, allow_val_change=True)


def short_name(config: Namespace | None, suffixes: Sequence[str] = ("Classifier", "Fusion", "Head", "Loss")) -> str:
    """The component's one name: its registry name (``medfusion.fusion.LowRankTensorFusion`` -> ``lmf``, the same
    as its config fragment and ``compare`` cell label), else the class name without the family suffix, lower
    case (``medfusion.models.MultimodalClassifier`` -> ``multimodal``)."""
    if config is None or not getattr(config, "class_path", None):
        return ""
    module, _, name = str(config.class_path).rpartition(".")
    with contextlib.suppress(ImportError, AttributeError, ValueError):
        registered = getattr(importlib.import_module(module), name).__dict__.get("registry_name")
        if registered:
            return registered
    for suffix in suffixes:
        name = name.removesuffix(suffix)
    return name.lower()


def describe_run(config: Namespace) -> tuple[str, list[str]]:
    """A run name and tags from the config: model kind, fusion, head, loss (their registered names) and seed, e.g.
    ``multimodal-gated-mlp-ce-s0``."""
    model = config.model
    init = getattr(model, "init_args", None) or Namespace()
    parts = [short_name(model), short_name(getattr(init, "fusion", None))]
    parts += [short_name(getattr(init, "head", None)), short_name(getattr(init, "loss", None))]
    tags = [p for p in parts if p]
    return "-".join([*tags, f"s{config.seed_everything}"]), tags


def name_wandb_runs(config: Namespace) -> None:
    """Give W&B loggers without a name the run's description as name, and add its parts to their tags."""
    loggers = config.trainer.logger
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        if isinstance(logger, Namespace) and str(logger.class_path).endswith("WandbLogger"):
            name, tags = describe_run(config)
            if logger.init_args.get("name") is None:
                logger.init_args["name"] = name
            existing = list(logger.init_args.get("tags") or [])
            logger.init_args["tags"] = existing + [t for t in tags if t not in existing]


def use_checkpoint_data(config: Namespace) -> None:
    """``validate|test|predict --ckpt_path FILE``: the data takes the class names and tokenizer from that file
    (``data.from_checkpoint``), so no training data is needed and nothing is retrained differently."""
    ckpt = config.get("ckpt_path")
    init = getattr(config.data, "init_args", None)
    if ckpt and ckpt not in ("best", "last") and init is not None and init.get("from_checkpoint", False) is None:
        init["from_checkpoint"] = ckpt


def localize_checkpoint(config: Namespace) -> None:
    """A URL ``--ckpt_path`` is refused unless ``--allow_remote_ckpt true``; then it is downloaded once into
    ``$MEDFUSION_CACHE/checkpoints`` and that local copy is used (loaded weights-only, like every checkpoint)."""
    ckpt = config.get("ckpt_path")
    if not ckpt or not is_remote(ckpt):
        return
    cache = default_cache_dir().parent / "checkpoints"
    if not config.get("allow_remote_ckpt"):
        raise CheckpointError(
            f"Refusing the remote checkpoint --ckpt_path {ckpt}: medfusion loads local files unless asked. Fix: "
            "download it and pass the local path, or add --allow_remote_ckpt true (it is then downloaded into "
            f"{cache} and still loaded weights-only, so no code in it runs)."
        )
    config.ckpt_path = str(fetch_remote(ckpt, cache))


def own_best_checkpoint(trainer: L.Trainer) -> str | None:
    """The best checkpoint of this run: the checkpoint callback's best path when it lies in that callback's own
    directory and exists; None otherwise (a resumed checkpoint's callback state may name another run's file)."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    dirpath = getattr(callback, "dirpath", None)
    if not best or dirpath is None:
        return None
    path = Path(best)
    return best if path.is_file() and path.resolve().parent == Path(dirpath).resolve() else None


class MedfusionCLI(LightningCLI):
    """LightningCLI with the datamodule's class info linked into the model and result files written."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attribute in ("num_classes", "class_names", "class_counts"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}", apply_on="instantiate")
        # the modality names, kinds and sizes (the text's vocab_size too): the model builds one encoder per name.
        # (Linking vocab_size on its own gave image and tabular models a stray hyper-parameter that broke
        # validate/test/predict from their checkpoints.)
        parser.link_arguments("data.modality_specs", "model.init_args.modalities", apply_on="instantiate")
        parser.add_lightning_class_args(MetricsJSON, "metrics_json")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_lightning_class_args(RetrievedPassages, "retrieved_passages")
        parser.add_lightning_class_args(Evaluation, "evaluation")
        parser.add_lightning_class_args(ValidationPredictions, "val_predictions")
        parser.add_lightning_class_args(Explanations, "explanations")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="After fit, test the best checkpoint (fit only)."
        )
        parser.add_argument(
            "--allow_remote_ckpt",
            type=bool,
            default=False,
            help="Accept a URL as --ckpt_path: download it, then load it weights-only like a local file.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        localize_checkpoint(config)
        name_wandb_runs(config)
        if self.subcommand == "fit":
            resolve_resume(config)
        elif self.subcommand in ("validate", "test", "predict"):
            use_checkpoint_data(config)

    def instantiate_trainer(self, **kwargs: Any) -> L.Trainer:
        """The configured trainer, with safe, atomic checkpoint IO (unless the config names its own)."""
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            trainer.strategy.checkpoint_io = SafeCheckpointIO()
        return trainer

    def before_fit(self) -> None:
        """Fail before training, not after it, when ``test_after_fit`` has nothing to test."""
        if self.config.fit.test_after_fit and not any(getattr(self.datamodule, "test_sizes", {"test": 1}).values()):
            raise ConfigError(
                "test_after_fit is set, but the data has no test rows (the split column names no 'test' rows and "
                "there are no data.test_sets). Fix: add test rows or data.test_sets, or set --test_after_fit false."
            )

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            best = own_best_checkpoint(self.trainer)
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path=best)

    def after_predict(self) -> None:
        """One summary line; a non-zero :attr:`exit_status` when some rows could not be predicted."""
        writer = next((c for c in self.trainer.callbacks if isinstance(c, PredictionWriter)), None)
        if writer is None or writer.summary is None:
            return
        total, failed, path = writer.summary
        if self.trainer.is_global_zero:
            note = f"; {failed} could not be predicted (status 'error', see the error column)" if failed else ""
            print(f"Predictions for {total} samples written to {path}{note}", file=sys.stderr if failed else sys.stdout)
        self.exit_status = 1 if failed else 0


def demo_data_main(argv: Sequence[str]) -> None:
    """medfusion demo-data OUT_DIR: write the synthetic demo dataset (CSV, JSON of reports, image folder)."""
    from medfusion.data.demo import make_demo_data

    parser = argparse.ArgumentParser(prog="medfusion demo-data", description=demo_data_main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long_tail", action="store_true", help="HAM10000-like class proportions")
    parser.add_argument(
        "--views", type=int, choices=(1, 2), default=1, help="images per case (2: dermoscopic, clinical)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace the files of a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    check_option("num_samples", args.num_samples, args.num_samples >= 1, "at least 1")
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"demo-data: {out_dir} exists and is not a directory. Fix: name a new or empty folder.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not args.overwrite:
        raise ConfigError(
            f"demo-data: {out_dir} is not empty ({', '.join(sorted(p.name for p in out_dir.iterdir())[:5])}); "
            "writing there would replace files such as metadata.csv and reports.json. "
            "Fix: name a new or empty folder, or add --overwrite."
        )
    out = make_demo_data(
        args.out_dir,
        num_samples=args.num_samples,
        image_size=args.image_size,
        seed=args.seed,
        long_tail=args.long_tail,
        views=args.views,
    )
    print(f"Wrote {args.num_samples} samples to {out} (metadata.csv, reports.json, images/)")


@contextlib.contextmanager
def program_name_only() -> Iterator[None]:
    """``sys.argv`` reduced to the program name for the duration."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def configured(model_class: type[ClassifierModule], args: list[str]) -> MedfusionCLI:
    """The model and datamodule that ``args`` (``--config`` and overrides) describe, built as ``fit`` builds them,
    without running anything or writing a run directory. (``sys.argv`` is hidden from it while it parses ``args``:
    LightningCLI warns when both are given, and an extra command's own options are in ``sys.argv``.)"""
    with program_name_only():
        return MedfusionCLI(
            model_class,
            MultimodalDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=False,
            save_config_callback=None,
            auto_configure_optimizers=False,
        )


def explain_main(argv: Sequence[str]) -> None:
    """medfusion explain --config CFG --ckpt_path CKPT [--ids ID ...]: write one PNG per sample with the Grad-CAM
    overlay of every image, the attention maps, modality weights, MoE routing and class probabilities; with a
    tabular modality also permutation_importance.png/.csv, the tabular features' importance on the test set."""
    from torch.utils.data import DataLoader

    from medfusion.interpret import explain_batch, save_explanations
    from medfusion.interpret.permutation import permutation_importance, save_permutation_importance
    from medfusion.runs.checkpoints import load_weights

    parser = argparse.ArgumentParser(
        prog="medfusion explain",
        description=explain_main.__doc__,
        epilog="Every other option (--config, --model.*, --data.*) builds the model and data as for 'medfusion test'.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the trained model's checkpoint")
    parser.add_argument("--ids", nargs="+", help="sample ids (any split); default: --num_samples test samples")
    parser.add_argument("--num_samples", type=int, default=8, help="without --ids: how many test samples")
    parser.add_argument("--out_dir", help="default: explanations/ next to the checkpoints/ directory")
    parser.add_argument(
        "--permutation_repeats", type=int, default=5, help="tabular permutation importance: shuffles per feature"
    )
    args, rest = parser.parse_known_args(argv)
    check_option("permutation_repeats", args.permutation_repeats, args.permutation_repeats >= 1, "at least 1")
    cli = configured(ClassifierModule, [*rest, f"--data.from_checkpoint={args.ckpt_path}"])
    model, datamodule = cli.model, cli.datamodule
    load_weights(model, args.ckpt_path)  # local files only, weights-only, finite weights
    datamodule.setup(None)
    places = find_places(datamodule, args.ids, args.num_samples)
    batch = datamodule.collate([dataset[i] for dataset, i in places])
    explanations = explain_batch(model, batch, datamodule.tokenizer, datamodule.mean, datamodule.std,
                                 crop_boxes(datamodule, places))  # fmt: skip
    out_dir = Path(args.out_dir) if args.out_dir else Path(args.ckpt_path).resolve().parent.parent / "explanations"
    paths = save_explanations(explanations, model.class_names, out_dir)
    for explanation, path in zip(explanations, paths, strict=True):
        predicted = model.class_names[int(explanation.probs.argmax())]
        true = "?" if explanation.label is None or explanation.label < 0 else model.class_names[explanation.label]
        print(f"{explanation.id}: true {true}, predicted {predicted} -> {path}")
    test_set = datamodule.datasets.get("test")
    if any(spec["kind"] == "tabular" for spec in model.modality_specs.values()) and test_set is not None:
        loader = DataLoader(test_set, batch_size=datamodule.batch_size, collate_fn=datamodule.collate)
        result = permutation_importance(model, loader, repeats=args.permutation_repeats, progress=True)
        png, _ = save_permutation_importance(result, out_dir)
        top, (drop, _) = next(iter(result.as_dict().items()))
        print(
            f"Permutation importance of {len(result.features)} tabular features on {len(test_set)} test samples "
            f"({result.metric} {result.baseline:.3f}; largest drop: {top} {drop:+.3f}) -> {png}"
        )


def pack_main(argv: Sequence[str]) -> None:
    """medfusion pack --config CFG --out DIR|URL: write the configuration's data (every set, every modality) as LitData
    streaming shards, read back by ``medfusion.data.ShardDataModule`` (``--data.shards DIR``)."""
    import time

    from medfusion.data.shards import pack, sets_to_pack

    parser = argparse.ArgumentParser(
        prog="medfusion pack",
        description=pack_main.__doc__,
        epilog="Every other option (--config, --data.*) builds the data as for 'medfusion fit'.",
    )
    parser.add_argument("--out", required=True, help="a new or empty folder, or an s3:// gs:// r2:// prefix")
    parser.add_argument("--workers", type=int, default=1, help="processes writing chunks (1 keeps it simplest)")
    parser.add_argument("--chunk_bytes", default="64MB", help="size of each chunk file")
    args, rest = parser.parse_known_args(argv)
    check_option("workers", args.workers, args.workers >= 1, "at least 1")
    dm = configured(ClassifierModule, rest).datamodule
    start = time.perf_counter()
    dm.setup(None)
    sets = sets_to_pack(dm)
    out = pack(sets, args.out, dm.image_size, dm.max_length, dm.state_dict(), dict(dm.data_report), args.workers)
    counts = ", ".join(f"{name} {len(dataset):,}" for name, dataset in sets.items())
    print(f"packed {counts} samples into {out} in {time.perf_counter() - start:.0f} s")


def find_samples(datamodule: MultimodalDataModule, ids: Sequence[str] | None, num_samples: int) -> list[dict]:
    """The samples with these ids from any split (validation, test sets, training, prediction), or the first
    ``num_samples`` of the test set; unknown ids raise with examples of known ones."""
    return [dataset[i] for dataset, i in find_places(datamodule, ids, num_samples)]


def find_places(
    datamodule: MultimodalDataModule, ids: Sequence[str] | None, num_samples: int
) -> list[tuple[MultimodalDataset, int]]:
    """Where :func:`find_samples` finds its samples: per sample its dataset (the training set without random
    augmentation) and index."""
    if not ids:
        dataset = datamodule.datasets["test"]
        return [(dataset, i) for i in range(min(num_samples, len(dataset)))]
    where: dict[str, tuple[Any, int]] = {}
    for name, dataset in reversed(list(datamodule.datasets.items())):  # earlier splits win
        if name == "train":  # as the model sees it at test time, without random augmentation
            dataset = copy.copy(dataset)
            dataset.transform = eval_transform(datamodule.image_size, datamodule.mean, datamodule.std)
        where.update({sample_id: (dataset, i) for i, sample_id in enumerate(dataset.ids)})
    missing = [i for i in ids if i not in where]
    if missing:
        known = ", ".join(list(where)[:5])
        raise KeyError(f"ids not found in any split of the data: {missing}; known ids look like: {known}")
    return [where[i] for i in ids]


def crop_boxes(datamodule: MultimodalDataModule, places: Sequence[tuple[MultimodalDataset, int]]) -> CropBoxes:
    """Per crop modality of the data (``data.crops``), its source and where each sample's crop was cut in it
    (fractions of the source as the model sees it), for ``explain`` to draw."""
    return {
        name: (spec.source, [dataset.shown_box(name, i, datamodule.image_size) for dataset, i in places])
        for name, spec in datamodule.crops.items()
        if name in datamodule.image_names and spec.source in datamodule.image_names
    }


# The extra commands by name, as "module:function" entry points imported on use: `compare` builds on this module,
# which therefore never imports it.
EXTRA_COMMANDS = {
    "demo-data": "medfusion.cli:demo_data_main",
    "explain": "medfusion.cli:explain_main",
    "pack": "medfusion.cli:pack_main",
    "compare": "medfusion.compare:compare_main",
    "export": "medfusion.export:export_main",
}
DESCRIPTION = (
    "Multimodal (images, text, clinical variables) medical classification. Subcommands fit/validate/test/predict take "
    "--config files (e.g. configs/demo.yaml). Also: 'medfusion demo-data OUT_DIR' writes the demo dataset, "
    "'medfusion explain --config CFG --ckpt_path CKPT --ids ID ...' writes Grad-CAM/attention figures, "
    "'medfusion pack --config CFG --out DIR' writes the data as streaming shards, "
    "'medfusion compare --config configs/compare/demo.yaml' trains a fusion x head grid and writes a leaderboard, "
    "'medfusion export --ckpt_path CKPT --out DIR' writes model.onnx, its preprocessing and a model card."
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run a ``medfusion`` command; returns its exit status (1 when ``predict`` could not predict some rows).
    Errors propagate as exceptions; :func:`console` is the console script that prints them."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        module, function = EXTRA_COMMANDS[args[0]].split(":")
        getattr(importlib.import_module(module), function)(args[1:])
        return 0
    try:
        cli = MedfusionCLI(
            ClassifierModule,
            MultimodalDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            auto_configure_optimizers=False,
            save_config_callback=LoggerSaveConfigCallback,
            parser_kwargs={"description": DESCRIPTION},
        )
    except Exception as err:
        found = user_error(err)
        if found is None or found is err:
            raise
        raise found from None  # the DataError itself, not jsonargparse's wrapper around it
    return getattr(cli, "exit_status", 0)


def user_error(err: BaseException) -> BaseException | None:
    """The input error (:data:`INPUT_ERRORS`) or :class:`DivergedError` behind ``err``: itself, or one it was raised
    from (jsonargparse wraps errors raised while the classes are built)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (*INPUT_ERRORS, DivergedError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def message_of(err: BaseException) -> str:
    """The error's own message, without the worker traceback a DataLoader worker process puts in front of it."""
    text = str(err)
    marker = f"{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith("Caught ") and "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def console(argv: Sequence[str] | None = None) -> None:
    """The ``medfusion`` console script: :func:`main`, with bad input (data, options, checkpoints) and diverged
    training printed as themselves (exit status 2 and 1), no traceback. ``--debug`` or ``MEDFUSION_DEBUG=1`` shows
    the traceback instead."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get("MEDFUSION_DEBUG", "") not in ("", "0")
    args = [a for a in args if a != "--debug"]
    try:
        status = main(args)
    except Exception as err:
        found = user_error(err)
        if found is None or debug:
            raise
        sys.stdout.flush()
        kind = "training stopped" if isinstance(found, DivergedError) else "bad input"
        print(f"\nmedfusion: {kind} ({type(found).__name__}; --debug shows the traceback):", file=sys.stderr)
        print(message_of(found), file=sys.stderr)
        sys.exit(1 if isinstance(found, DivergedError) else 2)
    sys.exit(status)


if __name__ == "__main__":
    console()
