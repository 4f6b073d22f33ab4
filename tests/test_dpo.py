"""DPO through the real loop: LoRA holds the base once and its reference is the un-adapted
base; a run killed with SIGKILL and rerun equals an uninterrupted one bit for bit."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from kill_helpers import sigkill_after_step

from llm.config import load_config
from llm.data import synthetic
from llm.loading import load_model
from llm.train.dpo import DpoTask, pair_logps
from llm.train.loop import train

COMMON = ["batch_size=8", "seq_len=48", "log.every_steps=1", "eval.every_steps=0",
          "optim.warmup_steps=1", "checkpoint.async_save=false", "data.num_workers=0",
          "data.split.validation=0.0"]


def records(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def sft_and_pairs(root: pathlib.Path, validation: float = 0.0):
    """(a briefly SFT-trained tiny model, the arithmetic preference pairs prepared with its
    tokenizer, `validation` of them held out) under `root`."""
    from llm.data import prepare as prepare_lib

    files = synthetic.generate("arithmetic", root / "raw", n=300)
    base = root / "sft"
    train(load_config("configs/sft.py:model=tiny", [
        f"workdir={base}", f"data.path={files['sft']}", "data.tokenizer.vocab_size=300",
        "total_steps=4", "optim.lr=3e-3", "checkpoint.every_steps=4", *COMMON]))
    data = load_config("configs/dpo.py:model=tiny").data
    data.inputs, data.output_dir = str(files["preference"]), str(root / "pairs")
    data.tokenizer.path, data.num_workers = str(base / "tokenizer"), 0
    data.split.validation = validation
    return base, prepare_lib.prepare(data)


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A briefly SFT-trained tiny model and the arithmetic preference pairs."""
    return sft_and_pairs(tmp_path_factory.mktemp("dpo"))


class RecordingDpo(DpoTask):
    """DPO that records, per batch, what is held and the reference's log-probs."""

    def __init__(self, config):
        super().__init__(config)
        self.seen: list[dict] = []

    def prepare(self, models, host_batch, rng):
        ids = {name: {id(x) for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)}
               for name, tree in (("frozen", models.frozen), ("params", models.params))}
        reference = {id(x) for x in jax.tree.leaves(models.side["reference"])}
        logps, _ = pair_logps(models.get("reference"),
                              {k: np.asarray(v) for k, v in host_batch.items()})
        self.seen.append({"held": models.held_bytes(), "frozen_ids": ids["frozen"],
                          "reference_ids": reference, "batch": host_batch,
                          "reference_logps": np.asarray(logps)})
        return host_batch


def dpo_config(workdir, base, pairs, *extra, spec="configs/dpo.py:model=tiny"):
    return load_config(spec, [f"workdir={workdir}", f"init_from={base}", f"data.path={pairs}",
                              "total_steps=3", "checkpoint.every_steps=3", *COMMON, *extra])


@pytest.mark.slow
def test_lora_dpo_holds_the_base_once_and_its_reference_is_the_base(start, tmp_path):
    base, pairs = start
    config = dpo_config(tmp_path / "lora", base, pairs, "optim.lr=1e-2",
                        spec="configs/dpo.py:model=tiny,lora")
    task = RecordingDpo(config)
    train(config, task)
    loaded = load_model(str(base))
    base_arrays = jax.tree.leaves(loaded.params)
    for seen in task.seen:
        # Every frozen base array is shared with the reference: no second copy exists.
        assert len(seen["frozen_ids"]) == len(base_arrays)
        assert seen["frozen_ids"] <= seen["reference_ids"]
        base_bytes = sum(x.size * x.dtype.itemsize for x in base_arrays)
        assert seen["held"] < 1.5 * base_bytes
    # The reference (adapters off, after the adapters have trained) is the un-adapted base.
    from flax import nnx

    plain = nnx.merge(loaded.graphdef, loaded.params)
    last = task.seen[-1]
    expected, _ = pair_logps(plain, {k: np.asarray(v) for k, v in last["batch"].items()})
    np.testing.assert_allclose(last["reference_logps"], np.asarray(expected), rtol=1e-6)
    rows = records(tmp_path / "lora")
    assert rows[0]["loss"] == pytest.approx(np.log(2), abs=1e-6)  # policy = reference
    assert rows[-1]["loss"] != rows[0]["loss"]


def run_script(workdir, base, pairs, *extra, wait=True):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu")
    command = [sys.executable, "scripts/train.py", "--config=configs/dpo.py:model=tiny",
               f"--config.workdir={workdir}", f"--config.init_from={base}",
               f"--config.data.path={pairs}", "--config.total_steps=8",
               "--config.checkpoint.every_steps=4", "--config.mesh.shape={'data': 1}",
               "--config.optim.lr=1e-3",
               *(f"--config.{o}" for o in COMMON), *extra]
    if not wait:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=env)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def assert_kill_and_rerun_equals_uninterrupted(tmp_path, base, pairs, *extra,
                                               keys=("loss", "batch_hash")):
    """An 8-step run_script run, and the same run killed with SIGKILL after step 6 then
    rerun, log the same `keys` every step and end with the same parameters bit for bit."""
    run_script(tmp_path / "full", base, pairs, *extra)
    proc = run_script(tmp_path / "killed", base, pairs, *extra, wait=False)
    sigkill_after_step(proc, 6)  # once step 6 is logged, checkpoint 4 is committed
    assert (tmp_path / "killed" / "checkpoints" / "4").is_dir()
    assert not (tmp_path / "killed" / "checkpoints" / "8").exists()
    run_script(tmp_path / "killed", base, pairs, *extra)
    a, b = records(tmp_path / "full"), records(tmp_path / "killed")
    assert [r["step"] for r in b] == list(range(1, 9))
    for key in keys:
        assert [r[key] for r in b] == [r[key] for r in a], key
    for x, y in zip(jax.tree.leaves(load_model(str(tmp_path / "full")).params),
                    jax.tree.leaves(load_model(str(tmp_path / "killed")).params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_sigkill_then_rerun_equals_uninterrupted(start, tmp_path):
    base, pairs = start
    assert_kill_and_rerun_equals_uninterrupted(
        tmp_path, base, pairs, keys=("loss", "batch_hash", "rewards/margins", "logps/chosen"))
