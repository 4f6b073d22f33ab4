"""Two local processes with jax.distributed and gloo collectives: the multi-host path.

The reference is one run of 2 processes x 2 CPU devices (a 4-device global mesh). The same
mesh in one process, both processes killed with SIGKILL and restarted, and restarts with
another process count are each compared with it (or with the one-process run).
"""

import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import portpicker
import pytest
from test_train_resume import assert_same_run, final_params, records

RUNNER = pathlib.Path(__file__).parent / "run_synthetic.py"
DEVICES = 4  # the global mesh: data=4 (run_synthetic's batch_size=8, total_steps=12)
TIMEOUT_S = 300  # per run, all its processes together


def _env(processes: int, index: int, port: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_"
               f"count={DEVICES // processes}")
    for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(key, None)
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES=str(processes), JAX_PROCESS_ID=str(index))
    return env


def start(workdir, processes: int, *args) -> list[tuple[subprocess.Popen, pathlib.Path]]:
    """Start the run's processes, each in its own process group, logging to a file."""
    port = portpicker.pick_unused_port()
    logs = pathlib.Path(workdir).parent / f"{pathlib.Path(workdir).name}-logs-{time.time_ns()}"
    logs.mkdir()
    procs = []
    for index in range(processes):
        log = logs / f"process_{index}.log"
        with open(log, "w") as out:
            procs.append((subprocess.Popen(
                [sys.executable, str(RUNNER), f"workdir={workdir}", *args],
                env=_env(processes, index, port), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True), log))
    return procs


def kill(procs) -> None:
    """SIGKILL every process group still alive, and reap them."""
    for proc, _ in procs:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    for proc, _ in procs:
        proc.wait(timeout=30)


def finish(procs, check: bool = True) -> list[tuple[int, str]]:
    """Wait (with one deadline) for every process; (exit status, output) of each."""
    deadline = time.time() + TIMEOUT_S
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
        kill(procs)
        outputs = "\n".join(log.read_text()[-2000:] for _, log in procs)
        raise AssertionError(f"the run did not finish in {TIMEOUT_S} s:\n{outputs}") from None
    finally:
        kill(procs)
    results = [(proc.returncode, log.read_text()) for proc, log in procs]
    if check:
        for status, out in results:
            assert status == 0, out[-3000:]
    return results


def wait_for_line(procs, prefix: str) -> None:
    """Poll process 0's log until a line starts with `prefix` (or fail, killing all)."""
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline:
        if any(line.startswith(prefix) for line in procs[0][1].read_text().splitlines()):
            return
        if any(proc.poll() is not None for proc, _ in procs):
            break
        time.sleep(0.2)
    kill(procs)
    raise AssertionError(f"no line {prefix!r}:\n{procs[0][1].read_text()[-3000:]}")


def run(workdir, processes: int, *args, check: bool = True) -> list[tuple[int, str]]:
    """One run of `processes` processes over the 4-device mesh, to its end."""
    return finish(start(workdir, processes, *args), check)


def checkpoint_steps(workdir) -> list[int]:
    return sorted(int(p.name) for p in (pathlib.Path(workdir) / "checkpoints").iterdir()
                  if p.name.isdigit())


def assert_close_run(a, b) -> None:
    """Same steps; losses within 1e-6 of their value and final parameters within 1e-6
    (reductions may sum in another order across processes). The losses are ~6 in float32,
    where 1e-6 absolute is 2 ulp; measured: 2.3e-7 relative (3 ulp) at most."""
    ra, rb = records(a), records(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb] == list(range(1, 13))
    np.testing.assert_allclose([r["loss"] for r in rb], [r["loss"] for r in ra], rtol=1e-6,
                               atol=0)
    for x, y in zip(final_params(a), final_params(b), strict=True):
        np.testing.assert_allclose(y, x, rtol=0, atol=1e-6)


def resume_from(source, target, step: int) -> None:
    """`target`: a copy of the run in `source` as it stood at checkpoint `step`."""
    shutil.copytree(source, target, dirs_exist_ok=True)
    for later in checkpoint_steps(target):
        if later > step:
            shutil.rmtree(pathlib.Path(target) / "checkpoints" / str(later))


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two") / "run"
    run(workdir, 2)
    return workdir


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("one") / "run"
    run(workdir, 1)
    return workdir


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_together(two_processes):
    assert [r["step"] for r in records(two_processes)] == list(range(1, 13))  # by process 0
    assert checkpoint_steps(two_processes) == [4, 8, 12]
    state = two_processes / "checkpoints" / "12" / "data_iterator"
    assert sorted(p.name for p in state.iterdir() if p.suffix == ".json") == [
        "process_0-of-2.json", "process_1-of-2.json"]
    assert not list(two_processes.glob("run-*.lock"))  # each process released its lock


@pytest.mark.slow
def test_one_process_on_the_same_mesh_trains_the_same(two_processes, one_process):
    assert_close_run(two_processes, one_process)


@pytest.mark.slow
def test_both_processes_killed_then_restarted_resume_bit_for_bit(two_processes, tmp_path):
    workdir = tmp_path / "run"
    procs = start(workdir, 2, "--hang-at-step=7")
    try:
        wait_for_line(procs, "step 5/")  # checkpoint 4 is committed; both then hang at 7
    finally:
        kill(procs)
    assert checkpoint_steps(workdir) == [4]
    assert sorted(p.name for p in workdir.glob("run-*.lock")) == ["run-0.lock", "run-1.lock"]
    outputs = [out for _, out in run(workdir, 2)]
    assert all("is gone; taking over" in out for out in outputs)
    assert "resumed from" in outputs[0] and "checkpoints/4" in outputs[0]
    assert_same_run(two_processes, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("before,after", [(2, 1), (1, 2)])
def test_a_restart_with_another_process_count_reshards_the_data(
        before, after, two_processes, one_process, tmp_path):
    reference = {2: two_processes, 1: one_process}[before]
    workdir = tmp_path / "run"
    resume_from(reference, workdir, 4)
    out = run(workdir, after)[0][1]
    assert (f"was written by {before} processes and this run has {after}: resuming the data "
            "stream at its global position {'next_index': 4}") in out
    assert "resumed from" in out and "checkpoints/4" in out
    assert_close_run(reference, workdir)


@pytest.mark.slow
def test_a_stream_that_cannot_reshard_is_refused_and_kept(two_processes, tmp_path):
    workdir = tmp_path / "run"
    resume_from(two_processes, workdir, 8)
    (status, out), = run(workdir, 1, "--fixed-shards", check=False)
    assert status != 0
    assert (f"checkpoint {workdir}/checkpoints/8 was written by 2 processes and this run "
            "has 1; this task's data iterator keeps a position per process, which cannot be "
            "moved to 1. Restart with 2 processes (JAX_NUM_PROCESSES=2), or use a new "
            "workdir") in out
    assert checkpoint_steps(workdir) == [4, 8]  # refused, not set aside as corrupt
    assert not list((workdir / "checkpoints").glob("corrupt_*"))
    assert not (workdir / "run-0.lock").exists()
