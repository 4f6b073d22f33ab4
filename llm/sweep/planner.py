"""The compute-optimal planner: a sweep's finished runs (or a published fit) → for a FLOP
budget, the optimal N and D, the predicted loss with a bootstrap interval, an extrapolation
warning, and the nearest sizes in configs/models.py with the `total_steps` that spend it."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
from collections.abc import Sequence

import numpy as np

from llm import scaling
from llm.sweep import results
from llm.sweep.runner import count_params
from llm.sweep.spec import RunSpec


def rows_from_folder(folder: pathlib.Path) -> list[dict]:
    """The results rows of every run under a sweep folder (each holds sweep_run.json)."""
    if not folder.is_dir():
        raise ValueError(f"--sweep={folder}: no such folder")
    rows = []
    for record_file in sorted(folder.glob("*/sweep_run.json")):
        record = json.loads(record_file.read_text())
        run = RunSpec(record["name"], record["overrides"], record["fixed"], record_file.parent)
        rows.append(results.read_row(run, count_params))
    if not rows:
        raise ValueError(f"--sweep={folder}: holds no sweep runs (no */sweep_run.json); run "
                         "scripts/sweep.py into it first")
    return rows


def points(rows: list[dict], metric: str = "final_eval_loss", count: str = "params"
           ) -> dict[str, np.ndarray]:
    """N, D (tokens), FLOPs and loss of the finished runs that have all four."""
    keep = [r for r in rows if r["status"] == "finished"
            and all(isinstance(r.get(k), int | float) for k in (metric, count, "tokens", "flops"))]
    if not keep:
        raise ValueError(f"no finished run has {metric}, {count}, tokens and flops to fit")
    return {"N": np.array([float(r[count]) for r in keep]),
            "D": np.array([float(r["tokens"]) for r in keep]),
            "flops": np.array([float(r["flops"]) for r in keep]),
            "loss": np.array([float(r[metric]) for r in keep])}


def fit_sweep(pts: dict[str, np.ndarray], count: str) -> scaling.LossLaw:
    """The law fitted to the runs, with k (FLOPs per parameter per token) measured from them."""
    k = float(np.median(pts["flops"] / (pts["N"] * pts["D"])))
    return scaling.fit(pts["N"], pts["D"], pts["loss"], flops_per_param_token=k,
                       name=f"fit to {len(pts['N'])} runs (N = {count.replace('_', ' ')})")


@dataclasses.dataclass(frozen=True)
class SizeOption:
    """A named model size and the run that spends the budget on it."""

    name: str
    params: int
    total_steps: int
    tokens: float
    loss: float


def nearest_sizes(law: scaling.LossLaw, budget: float, batch_size: int, seq_len: int,
                  vocab_size: int | None, count: str, n: int = 2) -> list[SizeOption]:
    """The `n` sizes in configs/models.py nearest N* (in log N), each with the total_steps
    whose FLOPs (the loop's per-token count) spend the budget."""
    from configs import models
    from llm import metrics
    from llm.model import ModelConfig

    target = law.optimal(budget)[0]
    options = []
    for name, fields in models.SIZES.items():
        fields = {**fields, **({"vocab_size": vocab_size} if vocab_size else {})}
        total, non_embedding = count_params(fields)
        N = total if count == "params" else non_embedding
        flops_per_token = metrics.train_flops_per_token(ModelConfig(**fields), seq_len)
        steps = max(1, round(budget / (flops_per_token * batch_size * seq_len)))
        tokens = steps * batch_size * seq_len
        options.append(SizeOption(name, N, steps, tokens, float(law.loss(N, tokens))))
    return sorted(options, key=lambda o: abs(math.log(o.params / target)))[:n]


def describe_budget(law: scaling.LossLaw, budget: float, pts: dict | None,
                    interval: tuple[float, float] | None, max_extrapolation: float
                    ) -> list[str]:
    """The planner's lines for one budget: optimum, interval, warnings."""
    N, D, loss = law.optimal(budget)
    ci = (f" (95% bootstrap interval {interval[0]:.4g}–{interval[1]:.4g})" if interval
          else " (published point estimate; no interval)")
    lines = [f"budget {budget:.3g} FLOPs: N* = {N:.4g} parameters, D* = {D:.4g} tokens "
             f"({D / N:.3g} tokens per parameter), predicted loss {loss:.4g}{ci}"]
    if pts is not None:
        factor = scaling.extrapolation(budget, pts["flops"])
        if factor > max_extrapolation:
            lines.append(f"  warning: the budget is {factor:.3g}× the largest run's FLOPs "
                         f"({pts['flops'].max():.3g}); the law is extrapolated far beyond "
                         "the runs")
        if not pts["N"].min() / max_extrapolation <= N <= pts["N"].max() * max_extrapolation:
            lines.append(f"  warning: N* is far outside the runs' sizes "
                         f"({pts['N'].min():.3g}–{pts['N'].max():.3g})")
    return lines


def plan(law: scaling.LossLaw, budgets: Sequence[float], pts: dict | None, *,
         batch_size: int, seq_len: int, vocab_size: int | None, count: str,
         bootstrap: int, max_extrapolation: float = 10.0) -> list[str]:
    """Every line the planner prints, for each budget."""
    lines = [law.describe()]
    reasons = scaling.poorly_determined(law) if pts is not None else []
    if reasons:
        lines.append(f"  warning: the fit is poorly determined ({'; '.join(reasons)}): the "
                     "runs need more sizes or tokens, where a larger model wins at the larger "
                     "budgets")
    intervals = [None] * len(budgets)
    if pts is not None and bootstrap > 0:
        samples = scaling.bootstrap(law, pts["N"], pts["D"], pts["loss"], budgets, bootstrap)
        if len(samples):
            intervals = [tuple(np.percentile(samples[:, i], [2.5, 97.5]))
                         for i in range(len(budgets))]
    for budget, interval in zip(budgets, intervals, strict=True):
        lines += describe_budget(law, budget, pts, interval, max_extrapolation)
        lines.append(f"  nearest sizes in configs/models.py (batch_size={batch_size}, "
                     f"seq_len={seq_len}):")
        for o in nearest_sizes(law, budget, batch_size, seq_len, vocab_size, count):
            lines.append(f"    {o.name}: {o.params:,} parameters, --config.total_steps="
                         f"{o.total_steps} ({o.tokens:.3g} tokens), predicted loss "
                         f"{o.loss:.4g}")
    return lines
