"""Running demo stages and reporting them: the timed run, the closing table, the curves."""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from types import ModuleType
from typing import NamedTuple

from llm.demo.context import Context

# One panel per training stage: the metrics.jsonl keys drawn, and the y-axis label.
CURVES = {
    "pretrain": (("loss", "eval_loss"), "loss (nats/token)"),
    "sft": (("loss",), "loss (nats/token)"),
    "reward": (("loss", "accuracy"), "Bradley-Terry loss / pair accuracy"),
    "dpo": (("loss", "rewards/accuracies"), "loss / implicit-reward accuracy"),
    "grpo": (("reward",), "mean verifier reward"),
    "ppo": (("objective/scores", "objective/kl"), "reward-model score / KL"),
}


class StageReport(NamedTuple):
    """What one stage's run shows: its name, seconds, table cell and text below the table."""

    name: str
    seconds: float
    headline: str
    details: str | None


def run_stage(stage: ModuleType, ctx: Context) -> StageReport:
    """Run one stage under a banner; returns what the closing table shows of it."""
    print(f"\n=== {stage.NAME} ===", flush=True)
    start = time.perf_counter()
    result = stage.run(ctx)
    seconds = time.perf_counter() - start
    details = stage.details(result) if hasattr(stage, "details") else None
    return StageReport(stage.NAME, seconds, stage.headline(result), details)


def print_table(reports: Sequence[StageReport]) -> None:
    """Print the markdown table of stages, then each stage's details below it."""
    print("\n| stage | seconds | result |\n|---|---|---|")
    for r in reports:
        print(f"| {r.name} | {r.seconds:.0f} | {r.headline} |")
    for r in reports:
        if r.details:
            print(f"\n{r.name}:\n{r.details}")


def plot_curves(workdir: pathlib.Path) -> pathlib.Path | None:
    """One PNG with a panel per training stage that has a metrics.jsonl, if any."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = {}
    for stage in CURVES:
        path = workdir / stage / "metrics.jsonl"
        if path.exists():
            rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            panels[stage] = rows
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], panels.items(), strict=True):
        keys, ylabel = CURVES[stage]
        for key in keys:
            points = [(r["step"], r[key]) for r in rows if key in r]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, "o-" if key.startswith("eval_") else "-", label=key)
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    path = workdir / "curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
