"""``medfusion export``: a trained model as ``model.onnx`` with its preprocessing files, a parity report and a model
card, for ONNX Runtime and :meth:`medfusion.deploy.Predictor.from_export`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from torch.utils.data import DataLoader

from medfusion.data.errors import ConfigError, check_option
from medfusion.data.state import find_data_state
from medfusion.deploy.inputs import Preprocessing, flat_arrays
from medfusion.deploy.model_card import model_card
from medfusion.deploy.onnx_export import check_exportable, export_onnx, parity
from medfusion.deploy.rebuild import model_from_checkpoint
from medfusion.deploy.runtime import require_onnxruntime


def parity_batches(datamodule: Any, modalities: dict[str, str], batch_size: int) -> Iterator[dict[str, Any]]:
    """The flat named arrays of the datamodule's test split (else its prediction set), ``batch_size`` at a time."""
    dataset = datamodule.datasets.get("test") or datamodule.datasets.get("predict")
    if dataset is None or len(dataset) == 0:
        raise ConfigError("The data has no test split nor prediction set to check the export on. Fix: give "
                          "--data.* options with test rows, or --data.predict_csv.")  # fmt: skip
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=datamodule.collate):
        yield {name: value.numpy() for name, value in flat_arrays(batch, modalities).items()}


def export_main(argv: Sequence[str]) -> None:
    """medfusion export --ckpt_path CKPT --out DIR [--format onnx]: write DIR/model.onnx (inputs by modality name,
    dynamic batch axis), the preprocessing it needs (preprocessing.json, tokenizer.json, tabular.json), parity.json
    (ONNX Runtime against PyTorch on the test split; the command fails above 1e-4) and MODEL_CARD.md."""
    from medfusion.cli import configured
    from medfusion.models import ClassifierModule

    parser = argparse.ArgumentParser(
        prog="medfusion export",
        description=export_main.__doc__,
        epilog="The parity cases come from the run's config.yaml next to the checkpoints/ folder, or from --config "
        "and --data.* options as for 'medfusion test'.",
    )
    parser.add_argument("--ckpt_path", required=True, help="the trained model's checkpoint (a local file)")
    parser.add_argument("--out", required=True, help="the folder to write")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="the exported format")
    parser.add_argument("--batch_size", type=int, default=32, help="cases per parity batch")
    args, rest = parser.parse_known_args(argv)
    check_option("batch_size", args.batch_size, args.batch_size >= 2, "at least 2")
    require_onnxruntime()
    start = time.perf_counter()
    model, checkpoint = model_from_checkpoint(args.ckpt_path)
    check_exportable(model)
    preprocessing = Preprocessing.from_data_state(find_data_state(checkpoint, args.ckpt_path), model.graded,
                                                  args.ckpt_path)  # fmt: skip
    config = Path(args.ckpt_path).resolve().parent.parent / "config.yaml"
    if not any(a == "--config" or a.startswith("--config=") for a in rest):
        if not config.is_file():
            raise ConfigError(f"No config.yaml beside {Path(args.ckpt_path).parent} to read the test cases from. "
                              "Fix: pass --config (and --data.* options) as for `medfusion test`.")  # fmt: skip
        run_config = yaml.safe_load(config.read_text(encoding="utf-8")) or {}
        parts = {key: run_config[key] for key in ("model", "data") if key in run_config}  # not fit's own options
        rest = ["--config", yaml.safe_dump(parts), *rest]
    datamodule = configured(ClassifierModule, [*rest, f"--data.from_checkpoint={args.ckpt_path}"]).datamodule
    datamodule.setup("test")
    out = Path(args.out)
    batches = list(parity_batches(datamodule, preprocessing.modalities, args.batch_size))
    sample = max(batches, key=lambda b: len(next(iter(b.values()))))
    onnx_path = export_onnx(model, preprocessing.modalities, sample, out / "model.onnx")
    written = [onnx_path, *preprocessing.save(out)]
    report = parity(model, preprocessing.modalities, onnx_path, batches)
    written.append(report.write(out / "parity.json"))
    card = model_card(args.ckpt_path, checkpoint, preprocessing, float(model.temperature), report.line())
    written.append(out / "MODEL_CARD.md")
    written[-1].write_text(card, encoding="utf-8")
    print(f"exported {args.ckpt_path} to {out} in {time.perf_counter() - start:.0f} s: "
          + ", ".join(p.name for p in written))  # fmt: skip
    print(report.line())
    if not report.passed:
        print(f"medfusion export: the ONNX model does not reproduce PyTorch's probabilities (see {out}/parity.json).",
              file=sys.stderr)  # fmt: skip
        sys.exit(1)
