"""Plan a compute-optimal run: python scripts/plan.py [--sweep=DIR] --budget=1e20[,1e21]

Fits L(N, D) = E + A/N^α + B/D^β to a sweep's finished runs (Huber on log-loss, L-BFGS from a
grid of starts, as Hoffmann et al. did) and, for each FLOP budget, prints the compute-optimal
N and D, the predicted loss with a bootstrap interval, a warning when the budget lies far
beyond the runs, and the nearest sizes in configs/models.py with the total_steps that spend
it. Without --sweep it uses a published fit (--published=hoffmann|epoch). The frontier plot
goes to --plot (default: DIR/frontier.png; without --sweep, only where --plot says).
"""

from __future__ import annotations

import pathlib
import sys

from absl import app, flags, logging

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

_SWEEP = flags.DEFINE_string("sweep", "", "a sweep folder (scripts/sweep.py's --config.folder)")
_BUDGET = flags.DEFINE_list("budget", [], "FLOP budgets, e.g. 1e20,1e21")
_PUBLISHED = flags.DEFINE_enum("published", "hoffmann", ["hoffmann", "epoch"],
                               "the published fit used without --sweep")
_METRIC = flags.DEFINE_string("metric", "final_eval_loss", "the runs' loss column to fit")
_COUNT = flags.DEFINE_enum("count", "params", ["params", "non_embedding_params"],
                           "how N is counted (Hoffmann et al.: every parameter)")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 100, "refits on resampled runs for the interval")
_BATCH = flags.DEFINE_integer("batch_size", 0, "sequences per step for total_steps "
                              "(0: the sweep's, else 256)")
_SEQ = flags.DEFINE_integer("seq_len", 0, "tokens per sequence (0: the sweep's, else 2048)")
_MAX_EXTRAPOLATION = flags.DEFINE_float("max_extrapolation", 10.0,
                                        "warn when a budget exceeds the runs' FLOPs this much")
_PLOT = flags.DEFINE_string("plot", "", "where the frontier PNG goes")


def _budgets() -> list[float]:
    if not _BUDGET.value:
        raise ValueError("--budget: required, e.g. --budget=1e20 (training FLOPs)")
    out = []
    for raw in _BUDGET.value:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"--budget={raw}: expected a number of FLOPs like 1e20") from None
        if not value > 0:
            raise ValueError(f"--budget={raw}: expected a positive number of FLOPs")
        out.append(value)
    return out


def _run_shape(rows: list[dict]) -> tuple[int, int, int | None]:
    """batch_size, seq_len and vocabulary of the sweep's runs (from a run's config.json)."""
    import json

    for row in rows:
        config = pathlib.Path(_SWEEP.value).absolute() / row["run"] / "config.json"
        if config.exists():
            saved = json.loads(config.read_text())
            return (saved["batch_size"], saved["seq_len"],
                    saved["resolved"]["model"]["vocab_size"])
    return 256, 2048, None


def main(argv: list[str]) -> None:
    """Fit (or take a published law), print the plan for each budget, save the frontier."""
    del argv
    logging.set_verbosity(logging.WARNING)
    from llm import scaling
    from llm.sweep import planner, plots

    try:
        budgets = _budgets()
        if _SWEEP.value:
            folder = pathlib.Path(_SWEEP.value).absolute()
            rows = planner.rows_from_folder(folder)
            pts = planner.points(rows, _METRIC.value, _COUNT.value)
            law = planner.fit_sweep(pts, _COUNT.value)
            batch, seq, vocab = _run_shape(rows)
            plot = pathlib.Path(_PLOT.value or folder / "frontier.png")
        else:
            pts, law = None, scaling.PUBLISHED[_PUBLISHED.value]
            batch, seq, vocab = 256, 2048, None
            plot = pathlib.Path(_PLOT.value) if _PLOT.value else None
        lines = planner.plan(law, budgets, pts, batch_size=_BATCH.value or batch,
                             seq_len=_SEQ.value or seq, vocab_size=vocab, count=_COUNT.value,
                             bootstrap=_BOOTSTRAP.value if pts is not None else 0,
                             max_extrapolation=_MAX_EXTRAPOLATION.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print("\n".join(lines))
    if plot is None:
        print("(--plot=FILE.png saves the frontier)")
        return
    try:
        print(f"frontier plot: {plots.frontier(law, pts, budgets, plot)}")
    except OSError as error:
        print(f"error: --plot={plot}: cannot write it ({error.strerror})", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
