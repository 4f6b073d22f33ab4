"""A run's workdir → one row of the results table; rows → CSV and markdown with mean ± std.

A run's status comes from its workdir and its last exit code:
- finished: exit code 0 with the newest checkpoint at `resolved.total_steps` (or the log
  says the run stopped early or ran out of data),
- unfinished: stopped by a signal or a time limit (exit code 75, or 0 short of its steps,
  or killed) — a rerun resumes it,
- failed: any other exit code, with the error line from its train.log,
- pending: never attempted.
"""

from __future__ import annotations

import csv
import json
import math
import pathlib
import statistics
from collections.abc import Sequence
from typing import Any

from llm.sweep.execute import ATTEMPT_HEADER
from llm.sweep.spec import RunSpec, format_value
from llm.train.workdir import EXIT_UNFINISHED

KILLED = (-15, -9, 137, 143)  # SIGTERM / SIGKILL, as Python or a shell reports them
FINISHED_EARLY = ("early stopping at step", "training data exhausted")
METRICS = ("final_eval_loss", "best_eval_loss", "final_loss", "tokens", "flops", "wall_s",
           "params", "non_embedding_params")


def read_jsonl(path: pathlib.Path) -> list[dict]:
    """The readable JSON lines of a file (a torn last line is skipped)."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def checkpoint_steps(workdir: pathlib.Path) -> list[int]:
    """Committed checkpoint steps (orbax commits a step by renaming it to its number)."""
    directory = workdir / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def last_attempt_log(workdir: pathlib.Path) -> list[str]:
    """The lines train.log holds for the newest attempt."""
    path = workdir / "train.log"
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(ATTEMPT_HEADER)]
    return lines[starts[-1] + 1:] if starts else lines


def error_line(log: Sequence[str]) -> str:
    """The run's own `error: ...` line, else the last line of a traceback, else the last."""
    for line in reversed(log):
        if line.startswith("error:"):
            return line[len("error:"):].strip()
    text = [line for line in log if line.strip()]
    return text[-1].strip() if text else "no output"


def status_of(workdir: pathlib.Path, total_steps: int | None) -> tuple[str, str]:
    """(status, error) of a run from its workdir and newest attempt."""
    attempts = read_jsonl(workdir / "attempts.jsonl")
    steps = checkpoint_steps(workdir)
    if not attempts:
        return ("unfinished", "") if steps else ("pending", "")
    code = int(attempts[-1]["exit_code"])
    log = last_attempt_log(workdir)
    if code == 0:
        done = total_steps is not None and steps and steps[-1] >= total_steps
        if done or any(marker in line for line in log for marker in FINISHED_EARLY):
            return "finished", ""
        return "unfinished", ""
    if code == EXIT_UNFINISHED or code in KILLED:
        return "unfinished", ""
    return "failed", error_line(log)


def _integrate(records: list[dict], key: str) -> float | None:
    """Total of a per-step count over the run: each logged step stands for the steps since
    the previous logged one (exact when every step is logged or the count is constant)."""
    total, previous, seen = 0.0, 0, False
    for record in records:
        if key in record:
            total += float(record[key]) * (int(record["step"]) - previous)
            previous, seen = int(record["step"]), True
    return total if seen else None


def eval_columns(records: list[dict]) -> dict[str, float]:
    """The newest evaluation's task metrics (every `eval*` key but the loss itself).

    The seam for the evaluation stage: whatever `eval.tasks` log lands here as columns."""
    evals = [r for r in records if any(k.startswith("eval") for k in r)]
    if not evals:
        return {}
    return {k: v for k, v in evals[-1].items()
            if k.startswith("eval") and k != "eval_loss" and isinstance(v, int | float)}


def read_row(run: RunSpec, counts: Any = None) -> dict[str, Any]:
    """One table row: overrides, status, losses, tokens, FLOPs, wall time, parameters."""
    workdir = run.workdir
    config = {}
    if (workdir / "config.json").exists():
        config = json.loads((workdir / "config.json").read_text())
    resolved = config.get("resolved", {})
    total_steps = resolved.get("total_steps")
    status, error = status_of(workdir, total_steps)
    records = sorted(read_jsonl(workdir / "metrics.jsonl"), key=lambda r: r.get("step", 0))
    train_records = [r for r in records if "loss" in r]
    evals = [float(r["eval_loss"]) for r in records if "eval_loss" in r]
    attempts = read_jsonl(workdir / "attempts.jsonl")
    row: dict[str, Any] = {"run": run.name, "group": run.group, **run.overrides,
                           "status": status, "error": error,
                           "step": train_records[-1]["step"] if train_records else 0,
                           "total_steps": total_steps,
                           "final_eval_loss": evals[-1] if evals else None,
                           "best_eval_loss": min(evals) if evals else None,
                           "final_loss": train_records[-1]["loss"] if train_records else None,
                           "tokens": _integrate(records, "tokens"),
                           "flops": _integrate(records, "flops"),
                           "wall_s": sum(float(a.get("wall_s", 0)) for a in attempts) or None}
    if counts is not None and resolved.get("model"):
        row["params"], row["non_embedding_params"] = counts(resolved["model"])
    row.update(eval_columns(records))
    return row


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return format_value(value) if not isinstance(value, str) else value


def aggregate(rows: list[dict], knobs: Sequence[str]) -> list[dict]:
    """One row per override set (seeds pooled): mean and std of each metric over finished
    seeds, and how many seeds finished."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    out = []
    for group, members in groups.items():
        done = [r for r in members if r["status"] == "finished"]
        summary = {"group": group, **{k: members[0].get(k) for k in knobs},
                   "seeds": len(members), "finished": len(done)}
        metrics = [k for k in members[0] if k in METRICS or k.startswith("eval")]
        for key in metrics:
            values = [float(r[key]) for r in done if isinstance(r.get(key), int | float)]
            summary[key] = statistics.fmean(values) if values else None
            summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(summary)
    return out


def write_csv(rows: list[dict], path: pathlib.Path) -> None:
    """Rows as CSV, columns in first-seen order."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows({k: _cell(row.get(k)) for k in columns} for row in rows)


def markdown(rows: list[dict], columns: Sequence[str]) -> str:
    """A markdown table of the given columns."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)).replace("|", "/") for c in columns)
                     + " |")
    return "\n".join(lines)


def summary_markdown(summary: list[dict], knobs: Sequence[str], metric: str) -> str:
    """The seed-pooled table: knobs, seeds finished, mean ± std of the headline metrics."""
    shown = [m for m in (metric, "best_eval_loss", "tokens", "flops", "wall_s")
             if any(s.get(m) is not None for s in summary)]
    shown = list(dict.fromkeys(shown))
    table = []
    for s in summary:
        row = {k: s.get(k) for k in knobs}
        row["finished"] = f"{s['finished']}/{s['seeds']}"
        for m in shown:
            mean, std = s.get(m), s.get(f"{m}_std")
            row[m] = "" if mean is None else f"{mean:.4g} ± {std:.2g}"
        table.append(row)
    return markdown(table, [*knobs, "finished", *shown])
