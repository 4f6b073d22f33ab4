"""Running demo stages and reporting them: the timed run, the closing table, the curves."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from types import ModuleType

from llm.demo.context import Context


def run_stage(stage: ModuleType, ctx: Context) -> tuple[float, str]:
    """Run one stage under a banner; returns its seconds and its table headline."""
    print(f"\n=== {stage.NAME} ===", flush=True)
    start = time.perf_counter()
    result = stage.run(ctx)
    return time.perf_counter() - start, stage.headline(result)


def print_table(rows: Sequence[tuple[str, float, str]]) -> None:
    """Print the markdown table of (stage, seconds, headline) rows."""
    print("\n| stage | seconds | result |\n|---|---|---|")
    for name, seconds, headline in rows:
        print(f"| {name} | {seconds:.0f} | {headline} |")


def plot_curves(workdir: pathlib.Path) -> pathlib.Path | None:
    """PNG of pretraining's training and validation loss from its metrics.jsonl, if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = workdir / "pretrain" / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-",
            label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("pretraining on the Python standard library")
    ax.legend()
    path = workdir / "curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path
