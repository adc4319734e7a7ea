"""One ``medfusion fit`` per (cell, seed) for the benchmark studies, read back when it has run before."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path


def fit_metrics(
    config: Path, name: str, args: list[str], seed: int, out_dir: Path, extra: list[str]
) -> tuple[dict[str, float], float]:
    """The test metrics (``metrics.json``) of one (cell, seed) and its run's wall seconds (NaN when unknown): read
    back from its run folder under ``out_dir``, else trained first (``medfusion fit --config config *args *extra``
    with the seed)."""
    slug = "".join(c if c.isalnum() else "_" for c in name) + f"-s{seed}"
    metrics, seconds = out_dir / slug / "version_0" / "metrics.json", out_dir / slug / "seconds.txt"
    if not metrics.is_file():
        command = [sys.executable, "-m", "medfusion", "fit", f"--config={config}", f"--seed_everything={seed}",
                   f"--trainer.logger.init_args.save_dir={out_dir}", f"--trainer.logger.init_args.name={slug}",
                   "--trainer.enable_progress_bar=false", *args, *extra]  # fmt: skip
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds.write_text(f"{time.perf_counter() - start:.1f}")
        print(f"{slug}: {seconds.read_text()} s", file=sys.stderr)
    wall = float(seconds.read_text()) if seconds.is_file() else float("nan")
    return json.loads(metrics.read_text()), wall
