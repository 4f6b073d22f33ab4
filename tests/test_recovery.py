"""Real runs in subprocesses, interrupted and damaged the ways users meet: a second run on a
busy workdir, kill -9, flipped bits in a checkpoint, no checkpoint readable at all. Each
must end equal, bit for bit, to the run nobody touched."""

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from test_train_resume import RUNNER, assert_same_run, records, run

from llm.checkpoint import Checkpointer, CheckpointError
from llm.data import checksums


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    run(workdir)
    return workdir


def flip_bit(path, rng) -> tuple[int, int]:
    """Flip one bit of `path` at a random position; returns (byte, mask) to flip it back."""
    data = bytearray(path.read_bytes())
    at, mask = int(rng.integers(len(data))), 1 << int(rng.integers(8))
    data[at] ^= mask
    path.write_bytes(bytes(data))
    return at, mask


def assert_each_flip_is_named(checkpointer, step: int, rng) -> list:
    """Flip one bit in each file of `step` in turn: verify fails naming that file (or, for
    the manifest, the entry it garbled); flipped back, the step verifies. Returns the files."""
    directory = checkpointer.directory / str(step)
    files = sorted(p for p in directory.rglob("*") if p.is_file())
    assert directory / checksums.MANIFEST in files
    checkpointer.verify(step)
    for file in files:
        at, mask = flip_bit(file, rng)
        with pytest.raises(CheckpointError) as caught:
            checkpointer.verify(step)
        if file.name != checksums.MANIFEST:  # a flipped digest names its file instead
            assert str(file) in str(caught.value), (file, str(caught.value))
        data = bytearray(file.read_bytes())
        data[at] ^= mask
        file.write_bytes(bytes(data))
        checkpointer.verify(step)
    return files


def _start(workdir, *overrides):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.Popen([sys.executable, str(RUNNER), f"workdir={workdir}", *overrides],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)


def _read_until(proc, prefix):
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(prefix):
            return lines
    raise AssertionError(f"the run ended before printing {prefix!r}:\n{''.join(lines)}")


def test_a_flipped_bit_in_any_file_of_a_step_is_named(tmp_path):
    import jax.numpy as jnp

    checkpointer = Checkpointer(tmp_path, async_save=False)
    state = {"w": jnp.arange(4096, dtype=jnp.float32), "b": jnp.ones(3)}
    checkpointer.save(1, state, None, {"tokens_seen": 0}, {"task": "synthetic"})
    checkpointer.wait()
    assert len(assert_each_flip_is_named(checkpointer, 1, np.random.default_rng(0))) > 8
    checkpointer.close()


@pytest.mark.slow
def test_second_run_is_refused_then_kill_9_and_rerun_resumes_exactly(uninterrupted, tmp_path):
    first = _start(tmp_path, "--hang-at-step=7")
    _read_until(first, "step 5/")  # checkpoint 4 is committed; the run then hangs
    # the same command, and one with a resume-safe change
    for extra in ([], ["total_steps=20"]):
        second = run(tmp_path, *extra, check=False)
        assert second.returncode != 0
        assert f"another run is training in this workdir (pid {first.pid} " in second.stderr
    first.send_signal(signal.SIGKILL)
    first.wait()
    steps = [r["step"] for r in records(tmp_path)]
    assert steps == sorted(set(steps)), "a step was written twice"
    rerun = run(tmp_path)
    assert "is gone; taking over" in rerun.stdout
    assert_same_run(uninterrupted, tmp_path)
    assert not (tmp_path / "run-0.lock").exists()


@pytest.mark.slow
def test_a_flipped_bit_sets_the_step_aside_and_the_run_matches(uninterrupted, tmp_path):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    step = tmp_path / "checkpoints" / "12"
    checkpointer = Checkpointer(tmp_path / "checkpoints")
    assert_each_flip_is_named(checkpointer, 12, np.random.default_rng(3))  # a real step's
    checkpointer.close()
    state = step / "state"
    biggest = max((p for p in state.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    flip_bit(biggest, np.random.default_rng(1))
    proc = run(tmp_path)
    out = proc.stdout + proc.stderr
    notices = [line for line in out.splitlines() if "is unreadable" in line]
    assert len(notices) == 1 and biggest.name in notices[0] and "checksum" in notices[0]
    assert "resumed from" in out and "checkpoints/8" in out
    assert "Traceback" not in out
    assert_same_run(uninterrupted, tmp_path)


@pytest.mark.slow
def test_no_readable_checkpoint_is_a_fresh_start(uninterrupted, tmp_path):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    rng = np.random.default_rng(2)
    for step in (4, 8):
        flip_bit(tmp_path / "checkpoints" / str(step) / "loop" / "metadata", rng)
    # step 12 as a checkpoint from before manifests, truncated: orbax itself fails on it
    newest = tmp_path / "checkpoints" / "12"
    (newest / checksums.MANIFEST).unlink()
    for file in (newest / "state").rglob("*"):
        if file.is_file():
            file.write_bytes(file.read_bytes()[: file.stat().st_size // 3])
    before = (tmp_path / "metrics.jsonl").read_text()
    proc = run(tmp_path)
    out = proc.stdout + proc.stderr
    notices = [line for line in out.splitlines() if "is unreadable" in line]
    assert len(notices) == 3, out
    assert "starting from step 0" in out
    assert len(out.splitlines()) < 40, out  # one line per step and notice, no dumps
    aside = list(tmp_path.glob("metrics.jsonl.before-*"))
    assert len(aside) == 1 and aside[0].read_text() == before
    assert_same_run(uninterrupted, tmp_path)  # the data read again from its start


@pytest.mark.slow
def test_a_step_from_before_manifests_is_restored_with_a_warning(uninterrupted, tmp_path):
    shutil.copytree(uninterrupted, tmp_path, dirs_exist_ok=True)
    (tmp_path / "checkpoints" / "12" / checksums.MANIFEST).unlink()
    proc = run(tmp_path)
    assert "has no checksum manifest" in proc.stdout
    assert "run already complete at step 12" in proc.stdout
    assert json.loads((tmp_path / "config.json").read_text())["task"]
