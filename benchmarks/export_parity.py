"""ONNX export of every fusion and head: parity with PyTorch and inference speed, ONNX Runtime against PyTorch.

    python benchmarks/export_parity.py [--out_dir runs/export_parity] [--num_samples 300] [--batch 32]

Each cell trains the image + text + tabular demo model (``configs/demo_tabular.yaml``: ResNet-18 and the tiny BERT
at 64 px) for two steps with one fusion or head swapped in (a parity check needs weights, not a good model), runs
``medfusion export`` on it (which fails above 1e-4), then times one batch of the test split on the CPU, PyTorch
(``torch.no_grad``, eval mode) against ONNX Runtime (``CPUExecutionProvider``), median of 7 after a warm-up, both
with the machine's threads. The table prints the export time, the largest probability difference, the share of
the same top class, both latencies and their ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from medfusion.cli import configured
from medfusion.cli import main as medfusion
from medfusion.deploy.onnx_export import ProbabilityModel, tensors
from medfusion.deploy.rebuild import model_from_checkpoint
from medfusion.deploy.runtime import require_onnxruntime
from medfusion.export import parity_batches
from medfusion.models import ClassifierModule

ROOT = Path(__file__).resolve().parent.parent
FUSIONS = ["concat", "add", "mul", "gated", "bilinear", "tensor", "lmf", "cross_attention", "co_attention",
           "hierarchical"]  # fmt: skip
HEADS = ["residual_mlp", "kan", "group_kan", "moe", "coral", "corn"]


def cells() -> dict[str, list[str]]:
    """Every fusion (MLP head), then every other head and the dual expert (concat fusion)."""
    found = {f"{name} fusion": ["--config", str(ROOT / f"configs/fusion/{name}.yaml")] for name in FUSIONS}
    found |= {f"{name} head": ["--config", str(ROOT / f"configs/head/{name}.yaml")] for name in HEADS}
    found["dual expert (image)"] = ["--model.dual_expert=image"]
    return found


def median_ms(run, *args, repeats: int = 7) -> float:
    """Milliseconds of ``run(*args)``: the median of ``repeats`` calls after one warm-up call."""
    run(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(*args)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", default="runs/export_parity")
    parser.add_argument("--num_samples", type=int, default=300)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    out_dir = Path(args.out_dir).resolve()
    runtime = require_onnxruntime()
    rows = []
    for name, extra in cells().items():
        slug = "".join(c if c.isalnum() else "_" for c in name)
        run_dir = out_dir / slug
        checkpoint = run_dir / "version_0" / "checkpoints" / "last.ckpt"
        if not checkpoint.is_file():
            medfusion(["fit", "--config", str(ROOT / "configs/demo_tabular.yaml"), *extra,
                       f"--data.num_samples={args.num_samples}", "--data.num_workers=0", "--trainer.max_epochs=1",
                       "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--test_after_fit=false",
                       f"--trainer.logger.init_args.save_dir={out_dir}", f"--trainer.logger.init_args.name={slug}",
                       "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"])  # fmt: skip
        export = run_dir / "export"
        start = time.perf_counter()
        medfusion(["export", f"--ckpt_path={checkpoint}", f"--out={export}", f"--batch_size={args.batch}"])
        export_s = time.perf_counter() - start
        report = json.loads((export / "parity.json").read_text())
        model, _ = model_from_checkpoint(checkpoint)
        modalities = json.loads((export / "preprocessing.json").read_text())["modalities"]
        config = ["--config", str(ROOT / "configs/demo_tabular.yaml"), f"--data.num_samples={args.num_samples}",
                  f"--data.from_checkpoint={checkpoint}"]  # fmt: skip
        datamodule = configured(ClassifierModule, config).datamodule
        datamodule.setup("test")
        batch = next(iter(parity_batches(datamodule, modalities, args.batch)))
        wrapper = ProbabilityModel(model, modalities).eval()
        inputs = tensors(batch, wrapper.names)
        session = runtime.InferenceSession(str(export / "model.onnx"), providers=["CPUExecutionProvider"])
        feed = {n: t.numpy() for n, t in zip(wrapper.names, inputs, strict=True)}
        with torch.no_grad():
            torch_ms = median_ms(wrapper, *inputs)
        onnx_ms = median_ms(session.run, ["probabilities"], feed)
        rows.append((name, export_s, report, torch_ms, onnx_ms))
        print(f"{name}: {report['max_abs_diff']:.1e}, torch {torch_ms:.1f} ms, onnx {onnx_ms:.1f} ms", flush=True)
    print(
        f"\n| model (batch of {args.batch}) | export s | max abs diff | same top class | PyTorch ms | "
        "ONNX Runtime ms | ONNX / PyTorch |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, export_s, report, torch_ms, onnx_ms in rows:
        print(
            f"| {name} | {export_s:.0f} | {report['max_abs_diff']:.1e} | {report['top_class_agreement']:.0%} | "
            f"{torch_ms:.1f} | {onnx_ms:.1f} | {onnx_ms / torch_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
