"""PNG plots of a sweep: the metric against each swept knob, every run's loss curves on one
axis, and a scaling-law frontier against the runs."""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from llm.sweep.results import read_jsonl


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on a cluster node
    from matplotlib import pyplot

    return pyplot


def _numeric(values: Sequence[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def metric_vs_knobs(rows: list[dict], knobs: Sequence[str], metric: str,
                    folder: pathlib.Path) -> list[pathlib.Path]:
    """One PNG per swept knob: `metric` of every finished run against the knob's value, the
    mean over the other knobs and seeds joined by a line."""
    plt = _pyplot()
    done = [r for r in rows if r["status"] == "finished" and r.get(metric) is not None]
    paths, partitions = [], set()
    for knob in knobs:
        values = [r.get(knob) for r in done]
        # knobs that move together (one run set's keys) split the runs alike: plot the first
        partition = tuple(sorted(tuple(i for i, v in enumerate(values) if str(v) == u)
                                 for u in {str(v) for v in values}))
        if len(partition) < 2 or partition in partitions:
            continue
        partitions.add(partition)
        numeric = _numeric(values)
        order = sorted(set(values)) if numeric else sorted({str(v) for v in values})
        position = {v: i for i, v in enumerate(order)}
        fig, ax = plt.subplots(figsize=(5, 3.5))
        xs = [v if numeric else position[str(v)] for v in values]
        ax.scatter(xs, [r[metric] for r in done], alpha=0.6, label="runs")
        means = [np.mean([r[metric] for r, v in zip(done, values, strict=True)
                          if (v if numeric else str(v)) == o]) for o in order]
        ax.plot(order if numeric else range(len(order)), means, "k-", label="mean")
        if numeric and min(order) > 0 and max(order) / min(order) >= 10:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(range(len(order)), order, rotation=30, ha="right", fontsize=7)
        ax.set_xlabel(knob)
        ax.set_ylabel(metric)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = folder / f"{metric}_vs_{knob.replace('.', '_')}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        paths.append(path)
    return paths


def loss_curves(rows: list[dict], folder: pathlib.Path) -> pathlib.Path | None:
    """Every run's training loss (and validation loss, dashed) against step, one axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = False
    for row in rows:
        records = read_jsonl(folder / row["run"] / "metrics.jsonl")
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        if not train:
            continue
        (line,) = ax.plot(*zip(*train, strict=True), lw=1, label=row["run"])
        if evals:
            ax.plot(*zip(*evals, strict=True), "--o", ms=3, lw=1, color=line.get_color())
        drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("step")
    ax.set_ylabel("loss (solid: train, dashed: validation)")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path = folder / "loss_curves.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def frontier(law: Any, points: dict[str, np.ndarray] | None, budgets: Sequence[float],
             path: pathlib.Path) -> pathlib.Path:
    """Loss against FLOPs: the runs (coloured by size), each size's fitted curve, and the
    compute-optimal frontier, with the asked budgets marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    k = law.flops_per_param_token
    if points is not None:
        C = points["flops"]
        lo, hi = C.min() / 3, max(C.max(), *budgets) * 3
        sizes = np.unique(points["N"])
        colors = plt.cm.viridis(np.linspace(0, 0.9, len(sizes)))
        for N, color in zip(sizes, colors, strict=True):
            pick = points["N"] == N
            ax.scatter(C[pick], points["loss"][pick], color=color, s=18,
                       label=f"runs N={N:.3g}")
            grid = np.geomspace(lo, hi, 100)
            ax.plot(grid, law.loss(N, grid / (k * N)), color=color, lw=0.8, alpha=0.6)
    else:
        lo, hi = min(budgets) / 1e3, max(budgets) * 10
    grid = np.geomspace(lo, hi, 200)
    ax.plot(grid, [law.optimal(c)[2] for c in grid], "k-", lw=2, label="compute-optimal")
    for budget in budgets:
        N, D, loss = law.optimal(budget)
        ax.plot(budget, loss, "r*", ms=12)
        ax.annotate(f"C={budget:.2g}\nN={N:.3g}", (budget, loss), fontsize=7,
                    xytext=(5, 5), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("loss")
    ax.set_title(law.name, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
