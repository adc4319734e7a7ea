"""Size and speed of every registered fusion at realistic sizes, relative to the concat baseline.

    python benchmarks/fusion_modules.py [--device cpu|cuda] [--repeats N] [--threads T]

Sizes: batch 32; image 512-d with 7x7 = 49 patches (ResNet-18 last stage); text 768-d with 64 tokens (BERT-base),
the second half of the batch with half of its text tokens padded; levels image [128, 256, 512] and text
[768, 768, 768]; out_dim 256. Time is one forward + backward (inputs require grad, as in end-to-end training):
warm-up, then the median of ``--repeats`` runs, taken round-robin over the fusions.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from medfusion.fusion import FUSIONS, Fusion, build_fusion

BATCH, OUT_DIM = 32, 256
IMAGE_DIM, TEXT_DIM = 512, 768
IMAGE_TOKENS, TEXT_TOKENS = 49, 64
LEVEL_DIMS = ([128, 256, 512], [768, 768, 768])


def make_case(name: str, device: torch.device) -> tuple[Fusion, tuple[Any, Any], dict[str, torch.Tensor]]:
    """The fusion with default hyperparameters and one batch of inputs of its kind, on ``device``."""
    kind = FUSIONS.get(name).input_kind
    kwargs: dict[str, torch.Tensor] = {}

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, requires_grad=True)

    if kind == "levels":
        fusion = build_fusion(name, image_dim=LEVEL_DIMS[0], text_dim=LEVEL_DIMS[1], out_dim=OUT_DIM)
        args: tuple[Any, Any] = ([rand(BATCH, d) for d in LEVEL_DIMS[0]], [rand(BATCH, d) for d in LEVEL_DIMS[1]])
    else:
        fusion = build_fusion(name, image_dim=IMAGE_DIM, text_dim=TEXT_DIM, out_dim=OUT_DIM)
        if kind == "tokens":
            args = (rand(BATCH, IMAGE_TOKENS, IMAGE_DIM), rand(BATCH, TEXT_TOKENS, TEXT_DIM))
            text_mask = torch.ones(BATCH, TEXT_TOKENS, dtype=torch.bool, device=device)
            text_mask[BATCH // 2 :, TEXT_TOKENS // 2 :] = False
            kwargs = {"text_mask": text_mask}
        else:
            args = (rand(BATCH, IMAGE_DIM), rand(BATCH, TEXT_DIM))
    return fusion.to(device).train(), args, kwargs


def forward_backward_seconds(fusion: Fusion, args: tuple[Any, Any], kwargs: dict[str, torch.Tensor]) -> float:
    """Wall time of one forward + backward (gradients cleared afterwards)."""
    device = next(fusion.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fusion(*args, **kwargs).sum().backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    fusion.zero_grad(set_to_none=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per fusion (median reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    opts = parser.parse_args()
    if opts.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but no CUDA device is available")
    device = torch.device(opts.device)
    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    torch.manual_seed(0)

    names = ["concat", *[n for n in FUSIONS.names() if n != "concat"]]
    cases = {name: make_case(name, device) for name in names}
    times: dict[str, list[float]] = {name: [] for name in names}
    # Round-robin over the fusions so that a noisy machine slows them all alike.
    for i in range(opts.warmup + opts.repeats):
        for name, case in cases.items():
            seconds = forward_backward_seconds(*case)
            if i >= opts.warmup:
                times[name].append(seconds)
    rows = [
        (name, fusion.input_kind, sum(p.numel() for p in fusion.parameters()), statistics.median(times[name]))
        for name, (fusion, _, _) in cases.items()
    ]
    base_params, base_time = rows[0][2], rows[0][3]

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu, {torch.get_num_threads()} threads"
    print(f"Fusion modules, forward + backward, torch {torch.__version__} on {where}; median of {opts.repeats}")
    print(
        f"batch {BATCH}; image {IMAGE_DIM}-d x {IMAGE_TOKENS} patches; text {TEXT_DIM}-d x {TEXT_TOKENS} tokens", end=""
    )
    print(f" (half the batch half padded); levels {LEVEL_DIMS[0]} / {LEVEL_DIMS[1]}; out_dim {OUT_DIM}\n")
    print("| fusion | input | parameters | × concat | fwd+bwd ms | × concat |")
    print("|---|---|---:|---:|---:|---:|")
    for name, kind, params, seconds in rows:
        print(
            f"| {name} | {kind} | {params:,} | {params / base_params:.2f} | {seconds * 1e3:.2f} | "
            f"{seconds / base_time:.1f} |"
        )


if __name__ == "__main__":
    main()
