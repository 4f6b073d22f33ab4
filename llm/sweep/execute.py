"""Running a sweep's runs: locally (one after another or N at once) or as one SLURM array job.

Each attempt at a run appends its output to `RUN/train.log` (after a header line) and one line
`{"exit_code", "wall_s", "executor", "started"}` to `RUN/attempts.jsonl`; the SLURM launcher
writes the same two files, so the results table reads both executors alike. A run's
overrides are kept in `RUN/sweep_run.json`.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import shlex
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from llm.sweep.spec import RunSpec

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ROOT / "scripts" / "train.py"
LAUNCH_SLURM = ROOT / "scripts" / "launch_slurm.sh"
ATTEMPT_HEADER = "=== sweep attempt"


def record_run(run: RunSpec, base: str) -> None:
    """Write RUN/sweep_run.json (what the table reads for the run's overrides)."""
    run.workdir.mkdir(parents=True, exist_ok=True)
    record = {"name": run.name, "base": base, "overrides": run.overrides, "fixed": run.fixed}
    target = run.workdir / "sweep_run.json"
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(target)


def attempt(run: RunSpec, base: str, extra: Mapping[str, Any] | None = None) -> int:
    """Train one run once (a rerun resumes from its checkpoints); returns the exit code."""
    record_run(run, base)
    started = time.time()
    command = [sys.executable, str(TRAIN), *run.flags(base, extra)]
    with (run.workdir / "train.log").open("a") as log:
        log.write(f"{ATTEMPT_HEADER} {time.strftime('%Y-%m-%dT%H:%M:%S')} ===\n"
                  f"{shlex.join(command)}\n")
        log.flush()
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                              check=False).returncode
    line = {"exit_code": code, "wall_s": round(time.time() - started, 3), "executor": "local",
            "started": started}
    with (run.workdir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps(line) + "\n")
    return code


def run_local(runs: Sequence[RunSpec], base: str, parallel: int = 1,
              extra: Mapping[str, Any] | None = None, describe: Any = None) -> None:
    """Every run, `parallel` at once; a failed run is recorded and the others go on.

    `describe(run)` gives the progress line's status (the table's reading of the workdir)."""
    total = len(runs)
    workers = max(1, parallel or total)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(attempt, run, base, extra): run for run in runs}
        for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
            run = futures[future]
            code = future.result()
            status = describe(run) if describe else f"exit code {code}"
            print(f"[{done}/{total}] {run.name}: {status}", flush=True)


def write_array_file(runs: Sequence[RunSpec], base: str, folder: pathlib.Path,
                     extra: Mapping[str, Any] | None = None) -> pathlib.Path:
    """FOLDER/slurm/runs-<time>.txt: line i is array task i's workdir and train.py flags,
    shell-quoted (the launcher reads its line back with the shell's own parsing)."""
    directory = folder / "slurm"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"runs-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.txt"
    lines = [shlex.join([str(run.workdir), *run.flags(base, extra)]) for run in runs]
    path.write_text("".join(line + "\n" for line in lines))
    for run in runs:
        record_run(run, base)
    return path


def submit_slurm(runs: Sequence[RunSpec], base: str, folder: pathlib.Path, sbatch_args: str,
                 parallel: int = 0, extra: Mapping[str, Any] | None = None,
                 dry_run: bool = False) -> list[str]:
    """One sbatch array job, one task per run, through scripts/launch_slurm.sh.

    With `dry_run` nothing is submitted: the sbatch command is printed, then each task's
    command as the launcher would run it. Returns the sbatch command."""
    array_file = write_array_file(runs, base, folder, extra)
    throttle = f"%{parallel}" if parallel else ""
    command = ["sbatch", f"--array=0-{len(runs) - 1}{throttle}",
               f"--job-name=sweep-{folder.name}", f"--output={folder}/slurm/%A_%a.out",
               *shlex.split(sbatch_args), str(LAUNCH_SLURM), f"--sweep_runs={array_file}"]
    if dry_run:
        print(shlex.join(command))
        for index in range(len(runs)):
            env = {**os.environ, "DRY_RUN": "1", "SLURM_ARRAY_TASK_ID": str(index)}
            out = subprocess.run(["bash", str(LAUNCH_SLURM), f"--sweep_runs={array_file}"],
                                 env=env, capture_output=True, text=True, check=True)
            print(f"  task {index}: {out.stdout.strip()}")
        return command
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed ({result.returncode}): {result.stderr.strip()}")
    print(result.stdout.strip())
    return command
