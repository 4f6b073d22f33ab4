"""Kill / resume / preemption: a restarted run continues exactly where it left off."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from kill_helpers import sigkill_after_step

from llm.train.workdir import EXIT_UNFINISHED

RUNNER = pathlib.Path(__file__).parent / "run_synthetic.py"


def run(workdir, *overrides, check=True, timeout=300):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run([sys.executable, str(RUNNER), f"workdir={workdir}", *overrides],
                          capture_output=True, text=True, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def records(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if "loss" in json.loads(line)]


def final_params(workdir):
    from llm.loading import load_model

    loaded = load_model(str(workdir))
    import jax

    return [np.asarray(x) for x in jax.tree.leaves(loaded.params)]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    run(workdir)
    return workdir


def assert_same_run(a, b):
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == list(range(1, 13))
    assert [r["step"] for r in rb] == [r["step"] for r in ra]
    assert [r["loss"] for r in rb] == [r["loss"] for r in ra]
    assert [r["batch_hash"] for r in rb] == [r["batch_hash"] for r in ra]
    for x, y in zip(final_params(a), final_params(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_sigkill_then_rerun_equals_uninterrupted(uninterrupted, tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen([sys.executable, str(RUNNER), f"workdir={tmp_path}"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    # Kill once step 6 is logged: checkpoint 4 is committed, steps 5-6 must be redone.
    sigkill_after_step(proc, 6, timeout=240)
    assert (tmp_path / "checkpoints" / "4").is_dir()
    assert not (tmp_path / "checkpoints" / "12").exists()
    run(tmp_path)
    assert_same_run(uninterrupted, tmp_path)


def test_kill_between_temporary_write_and_commit(uninterrupted, tmp_path):
    proc = run(tmp_path, "--crash-before-commit=8", check=False)
    assert proc.returncode == 137
    assert not (tmp_path / "checkpoints" / "8").exists()
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if "tmp" in p.name]
    assert leftovers, "the fault point should leave an uncommitted temporary directory"
    run(tmp_path)
    assert_same_run(uninterrupted, tmp_path)


def test_sigterm_saves_and_exits_unfinished(tmp_path):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.Popen([sys.executable, str(RUNNER), f"workdir={tmp_path}",
                             "total_steps=1000", "checkpoint.every_steps=500"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    while True:
        line = proc.stdout.readline()
        assert line, "run ended before reaching step 3"
        if line.startswith("step 3/"):
            break
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_UNFINISHED, out  # not 0: `train && sample` must not go on
    steps = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps and 3 <= max(steps) < 500


def test_nan_stops_run_and_keeps_last_good_checkpoint(tmp_path):
    proc = run(tmp_path, "--nan-at-step=6", check=False)
    assert proc.returncode != 0
    assert "non-finite loss" in proc.stderr + proc.stdout
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                   if p.name.isdigit())
    assert steps == [4]
    for leaf in final_params(tmp_path):
        assert np.all(np.isfinite(leaf))


def test_corrupt_newest_checkpoint_falls_back(uninterrupted, tmp_path):
    import shutil

    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    newest = tmp_path / "checkpoints" / "12" / "state"
    for file in newest.rglob("*"):
        if file.is_file():  # truncate every array file of the newest step
            file.write_bytes(file.read_bytes()[: len(file.read_bytes()) // 3])
    proc = run(tmp_path, "total_steps=12")
    assert "unreadable" in proc.stdout
    assert "resumed from" in proc.stdout and "checkpoints/8" in proc.stdout
