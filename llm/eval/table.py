"""Results as one table, models by tasks: markdown for the README and CSV for sheets.

A results file (`scripts/eval.py --config.output_file`) is JSON:
`{"model": init_from, "tasks": {task: {metric: value, metric_stderr: value, "n": rows}}}`.
Each cell shows a task's headline metric as `value ± stderr`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence

# The metric a task's column shows, by the metrics it has (first found wins).
HEADLINE = ("acc_norm", "pass@1", "bits_per_byte", "acc")


def headline(metrics: Mapping[str, float]) -> str:
    """The name of the metric a table shows for one task's results."""
    name = next((m for m in HEADLINE if m in metrics), None)
    if name is None:
        name = next(k for k in metrics if not k.endswith("_stderr") and k not in
                    ("n", "truncated"))
    return name


def columns(results: Sequence[Mapping]) -> list[tuple[str, str]]:
    """(task, metric) columns over every model's results, in first-seen order."""
    out: dict[tuple[str, str], None] = {}
    for result in results:
        for task, metrics in result["tasks"].items():
            out[(task, headline(metrics))] = None
    return list(out)


def cell(metrics: Mapping[str, float] | None, metric: str) -> str:
    """'0.6200 ± 0.0488', or '' where the model was not evaluated on the task."""
    if not metrics or metric not in metrics:
        return ""
    return f"{metrics[metric]:.4f} ± {metrics.get(metric + '_stderr', 0.0):.4f}"


def markdown(results: Sequence[Mapping]) -> str:
    """A markdown table: one row per model, one column per task (value ± stderr)."""
    cols = columns(results)
    lines = ["| model | " + " | ".join(f"{t} {m}" for t, m in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for result in results:
        cells = [cell(result["tasks"].get(t), m) for t, m in cols]
        lines.append(f"| {result['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(results: Sequence[Mapping]) -> str:
    """CSV: model, then per task its metric and the metric's standard error."""
    cols = columns(results)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["model", *(f"{t}/{x}" for t, m in cols for x in (m, m + "_stderr"))])
    for result in results:
        row = [result["model"]]
        for task, metric in cols:
            metrics = result["tasks"].get(task) or {}
            row += [metrics.get(metric, ""), metrics.get(metric + "_stderr", "")]
        writer.writerow(row)
    return buffer.getvalue()
