"""A sweep end to end: check every run's config, prepare shared data, run what is left,
then write the results table and plots into the sweep's folder."""

from __future__ import annotations

import functools
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from llm import config as config_lib
from llm.sweep import execute, plots, results
from llm.sweep.spec import RunSpec, check_overrides, expand

RERUN = ("pending", "unfinished")


def load_sweep(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """The sweep config named on the command line, with its `--config.key=value` overrides."""
    return config_lib.load_config(spec, overrides)


def resolve_base(base: str) -> str:
    """The base config with an absolute path (relative to the working directory, else to the
    checkout), so runs started from anywhere read the same file."""
    path, sep, arg = base.partition(":")
    for candidate in (pathlib.Path(path), execute.ROOT / path):
        if candidate.is_file():
            return str(candidate.absolute()) + sep + arg
    raise config_lib.ConfigError(f"base={base!r}: no such config file (looked in the working "
                                 f"directory and {execute.ROOT})")


def shared_data(sweep: ml_collections.ConfigDict, folder: pathlib.Path) -> dict[str, Any]:
    """Overrides every run gets for data prepared once: {} or {'data.path': ...}."""
    if sweep.shared_data != "demo":
        return {}
    from llm.demo import data as demo_data
    from llm.demo.context import Context

    prepared = folder / "data" / "prepared"
    if not (prepared / "meta.json").exists():
        print(f"preparing the demo corpus ({sweep.demo_files} standard-library files) once "
              f"into {folder / 'data'}", flush=True)
        demo_data.run(Context(workdir=folder / "data", root=execute.ROOT,
                              files=int(sweep.demo_files)))
    return {"data.path": str(prepared)}


@functools.lru_cache(maxsize=64)
def _counts(model_json: str) -> tuple[int, int]:
    from llm import scaling

    return scaling.count_params(json.loads(model_json))


def count_params(model: dict) -> tuple[int, int]:
    """(all, non-embedding) parameters of a resolved model section (cached per shape)."""
    return _counts(json.dumps(model, sort_keys=True))


def describe(run: RunSpec) -> str:
    """A run's status as the progress line shows it."""
    workdir = run.workdir
    total = None
    if (workdir / "config.json").exists():
        total = json.loads((workdir / "config.json").read_text()).get("resolved", {}).get(
            "total_steps")
    status, error = results.status_of(workdir, total)
    return f"{status}: {error}" if error else status


def run_sweep(sweep: ml_collections.ConfigDict, path: str = "sweep",
              dry_run: bool = False) -> list[dict]:
    """Run every run not yet finished (failed ones too with `retry_failed`) and write the
    results; returns the table's rows. Nothing runs unless every run's config builds."""
    runs = expand(sweep, path)
    base = resolve_base(sweep.base)
    folder = pathlib.Path(sweep.folder).absolute()
    placeholder = {"data.path": str(folder / "data" / "prepared")} if sweep.shared_data else {}
    check_overrides(base, runs, path, placeholder)
    statuses = {run.name: describe(run).partition(":")[0] for run in runs}
    todo = [run for run in runs if statuses[run.name] in RERUN
            or (sweep.retry_failed and statuses[run.name] == "failed")]
    skipped = {s: sum(1 for r in runs if statuses[r.name] == s and r not in todo)
               for s in ("finished", "failed")}
    print(f"sweep {path}: {len(runs)} runs in {folder}; {len(todo)} to run, "
          f"{skipped['finished']} finished, {skipped['failed']} failed (kept; "
          "--config.retry_failed=true reruns them)", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    if todo and sweep.executor == "slurm":
        extra = placeholder if dry_run else shared_data(sweep, folder)
        execute.submit_slurm(todo, base, folder, sweep.slurm.sbatch_args,
                             sweep.slurm.max_parallel,
                             extra, dry_run=dry_run or os.environ.get("DRY_RUN") == "1")
        return []
    if todo:
        execute.run_local(todo, base, sweep.parallel, shared_data(sweep, folder), describe)
    return write_results(runs, folder, sweep.metric)


def write_results(runs: Sequence[RunSpec], folder: pathlib.Path, metric: str) -> list[dict]:
    """results.csv (a row per run), summary.csv (seeds pooled), results.md and the plots."""
    rows = [results.read_row(run, count_params) for run in runs]
    knobs = [k for k in dict.fromkeys(k for run in runs for k in run.overrides)
             if len({json.dumps(run.overrides.get(k), default=str) for run in runs}) > 1]
    pooled = [k for k in knobs if k != "seed"]
    summary = results.aggregate(rows, pooled)
    results.write_csv(rows, folder / "results.csv")
    results.write_csv(summary, folder / "summary.csv")
    headline = "final_eval_loss" if metric == "eval_loss" else metric
    columns = ["run", *knobs, "status", "final_eval_loss", "best_eval_loss", "final_loss",
               "tokens", "flops", "wall_s", "params", "error"]
    columns += [k for k in dict.fromkeys(k for r in rows for k in r)
                if k.startswith("eval") and k not in columns]
    text = (f"# Sweep results: {folder.name}\n\n## Runs\n\n{results.markdown(rows, columns)}\n\n"
            f"## Mean ± std over seeds\n\n"
            f"{results.summary_markdown(summary, pooled, headline)}\n")
    pngs = plots.metric_vs_knobs(rows, pooled, headline, folder)
    curves = plots.loss_curves(rows, folder)
    pngs += [curves] if curves else []
    text += "".join(f"\n![{p.stem}]({p.name})\n" for p in pngs)
    (folder / "results.md").write_text(text)
    print(results.markdown(rows, [c for c in columns if c != "error"]))
    failed = [r for r in rows if r["status"] == "failed"]
    for row in failed:
        print(f"failed: {row['run']}: {row['error']}")
    print(f"results: {folder / 'results.md'} (csv: results.csv, summary.csv; "
          f"{len(pngs)} plots)", flush=True)
    return rows
