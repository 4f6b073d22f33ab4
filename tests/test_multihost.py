"""Two local processes with jax.distributed and gloo collectives: the multi-host path."""

import json
import os
import pathlib
import subprocess
import sys

import portpicker
import pytest

RUNNER = pathlib.Path(__file__).parent / "run_synthetic.py"


@pytest.mark.slow
def test_two_processes_train_and_checkpoint_together(tmp_path):
    port = portpicker.pick_unused_port()
    procs = []
    for process_id in range(2):
        env = dict(os.environ, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(process_id), JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=2")
        procs.append(subprocess.Popen(
            [sys.executable, str(RUNNER), f"workdir={tmp_path}", "total_steps=6",
             "checkpoint.every_steps=3"], env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]  # written once, by process 0
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                  if p.name.isdigit()) == [3, 6]
    state = tmp_path / "checkpoints" / "6" / "data_iterator"
    assert sorted(p.name for p in state.iterdir() if p.suffix == ".json") == [
        "process_0-of-2.json", "process_1-of-2.json"]
