"""Rerun every benchmark and rewrite the summary table at the top of docs/benchmarks.md.

    python scripts/bench_all.py                          # full sizes; rewrites the summary
    python scripts/bench_all.py --only=train,sample      # those two; the other rows stay
    python scripts/bench_all.py --quick --results=/tmp/quick.json   # tiny: JSON lines only
    python scripts/bench_all.py --from_results=/tmp/full.json       # table from saved results

Each benchmark (`llm/benchmarks.py`'s SPECS) runs as its own subprocess, one after another,
and its last stdout line is read as its JSON result. A run's records are merged into
`docs/benchmarks.json` (the latest record per benchmark) and the summary between the
markers in `docs/benchmarks.md` is rendered from it. `--quick` runs tiny sizes and few steps
to check that every benchmark still ends in its JSON line; it writes neither file unless
`--write` is given. The machine line of each record holds the XLA fp32 matmul peak measured
at the start of the run, since VMs of one kind differ.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time
from typing import Any

from absl import app, flags

from llm import benchmarks

ROOT = pathlib.Path(__file__).resolve().parents[1]

_QUICK = flags.DEFINE_bool("quick", False, "tiny sizes, few steps: check each JSON line")
_ONLY = flags.DEFINE_list("only", [], f"benchmarks to run: {','.join(benchmarks.BY_NAME)}")
_RESULTS = flags.DEFINE_string("results", "", "write this run's records (JSON) here")
_FROM = flags.DEFINE_string("from_results", "",
                            "rerun nothing: take the records from this file (as --results "
                            "wrote it, or docs/benchmarks.json itself)")
_WRITE = flags.DEFINE_bool("write", None, "merge the records into --store and rewrite --doc's "
                           "summary (default: yes unless any record is --quick)")
_DOC = flags.DEFINE_string("doc", str(ROOT / "docs" / "benchmarks.md"), "the page to rewrite")
_STORE = flags.DEFINE_string("store", str(ROOT / "docs" / "benchmarks.json"),
                             "the latest record of every benchmark")
_WORKDIR = flags.DEFINE_string("workdir", "", "scratch for benchmarks that write files, one "
                               "folder each, kept (default: a temporary folder, removed)")
_TIMEOUT = flags.DEFINE_integer("timeout", 3600, "seconds one benchmark may run", lower_bound=1)


def machine() -> str:
    """CPU count and model, the JAX backend, and the fp32 matmul peak measured now."""
    import jax

    from llm import metrics
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f
                         if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    backend = jax.default_backend()
    peak = metrics.measure_peak()
    return (f"{os.cpu_count()} × {model}, {backend}, "
            f"XLA fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")


def run_one(spec: benchmarks.Spec, quick: bool, scratch: pathlib.Path,
            host: str) -> dict[str, Any]:
    """Run one benchmark in a subprocess; its record (the JSON result and where from)."""
    args = [a.replace("{scratch}", str(scratch)) for a in (spec.quick if quick else spec.full)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    load = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / spec.script), *args],
                          capture_output=True, text=True, cwd=ROOT, env=env,
                          timeout=_TIMEOUT.value)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{spec.name}: scripts/{spec.script} exited {done.returncode}:\n"
                           f"{done.stderr[-3000:]}")
    return {"result": benchmarks.last_json(done.stdout, spec.name),
            "date": datetime.date.today().isoformat(),
            "machine": f"{host}, load {load:.1f} at start",
            "command": benchmarks.command(spec, quick), "quick": quick,
            "seconds": round(seconds, 1), "source": "`scripts/bench_all.py`" +
            (" --quick" if quick else "") + " run (the script's own JSON line)"}


def run_all(specs: list[benchmarks.Spec], quick: bool,
            workdir: pathlib.Path) -> tuple[dict[str, Any], list[str]]:
    """Records of every spec that ran, and the errors of those that did not."""
    host = machine()
    print(f"machine: {host}", flush=True)
    records, errors = {}, []
    for spec in specs:
        scratch = workdir / spec.name
        scratch.mkdir(parents=True, exist_ok=True)
        print(f"{spec.name}: {benchmarks.command(spec, quick)}", flush=True)
        try:
            records[spec.name] = run_one(spec, quick, scratch, host)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired) as error:
            errors.append(str(error))
            print(f"  FAILED: {str(error).splitlines()[0]}", flush=True)
            continue
        print(f"  {records[spec.name]['seconds']} s: "
              f"{json.dumps(records[spec.name]['result'])[:300]}", flush=True)
    return records, errors


def main(argv: list[str]) -> None:
    """Run (or load) the records, write them, print and rewrite the summary."""
    del argv
    try:
        specs = benchmarks.select(_ONLY.value)
        if _FROM.value:
            records = benchmarks.load_records(pathlib.Path(_FROM.value))
            records = {s.name: records[s.name] for s in specs if s.name in records}
            errors = []
        elif _WORKDIR.value:
            records, errors = run_all(specs, _QUICK.value, pathlib.Path(_WORKDIR.value))
        else:
            with tempfile.TemporaryDirectory(prefix="bench_all_") as tmp:
                records, errors = run_all(specs, _QUICK.value, pathlib.Path(tmp))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if _RESULTS.value:
        pathlib.Path(_RESULTS.value).write_text(json.dumps(records, indent=1) + "\n")
    write = _WRITE.value
    if write is None:
        write = bool(records) and not any(r.get("quick") for r in records.values())
    store = pathlib.Path(_STORE.value)
    if write:
        merged = benchmarks.load_records(store) if store.exists() else {}
        merged.update(records)
        store.write_text(json.dumps(merged, indent=1, ensure_ascii=False) + "\n")
        records = merged
    summary = benchmarks.render_summary(records)
    print(summary)
    if write:
        doc = pathlib.Path(_DOC.value)
        doc.write_text(benchmarks.rewrite_doc(doc.read_text(), summary))
        print(f"wrote {store} and the summary in {doc}")
    if errors:
        print("\n\n".join(errors), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
