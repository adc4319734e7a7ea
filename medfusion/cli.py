"""The ``medfusion`` command: LightningCLI's fit | validate | test | predict, plus ``demo-data``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from medfusion.callbacks import MetricsJSON, PredictionWriter
from medfusion.data import MultimodalDataModule
from medfusion.models import ClassifierModule


class MedfusionCLI(LightningCLI):
    """LightningCLI with the datamodule's class info linked into the model and result files written."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for attribute in ("num_classes", "class_names", "class_counts", "vocab_size"):
            parser.link_arguments(f"data.{attribute}", f"model.init_args.{attribute}", apply_on="instantiate")
        parser.add_lightning_class_args(MetricsJSON, "metrics_json")
        parser.add_lightning_class_args(PredictionWriter, "prediction_writer")
        parser.add_argument(
            "--test_after_fit", type=bool, default=False, help="After fit, test the best checkpoint (fit only)."
        )

    def after_fit(self) -> None:
        if self.config.fit.test_after_fit:
            has_best = bool(getattr(self.trainer.checkpoint_callback, "best_model_path", ""))
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if has_best else None)


def demo_data_main(argv: Sequence[str]) -> None:
    """medfusion demo-data OUT_DIR: write the synthetic demo dataset (CSV, JSON of reports, image folder)."""
    from medfusion.data.demo import make_demo_data

    parser = argparse.ArgumentParser(prog="medfusion demo-data", description=demo_data_main.__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--long_tail", action="store_true", help="HAM10000-like class proportions")
    args = parser.parse_args(argv)
    out = make_demo_data(
        args.out_dir, num_samples=args.num_samples, image_size=args.image_size, seed=args.seed, long_tail=args.long_tail
    )
    print(f"Wrote {args.num_samples} samples to {out} (metadata.csv, reports.json, images/)")


EXTRA_COMMANDS = {"demo-data": demo_data_main}
DESCRIPTION = (
    "Multimodal (image + text) medical classification. Subcommands fit/validate/test/predict take "
    "--config files (e.g. configs/demo.yaml). Also: 'medfusion demo-data OUT_DIR' writes the demo dataset."
)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the ``medfusion`` console script."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in EXTRA_COMMANDS:
        EXTRA_COMMANDS[args[0]](args[1:])
        return
    MedfusionCLI(
        ClassifierModule,
        MultimodalDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=None if argv is None else args,
        auto_configure_optimizers=False,
        parser_kwargs={"description": DESCRIPTION},
    )


if __name__ == "__main__":
    main()
