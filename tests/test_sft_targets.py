"""A step whose whole batch has no target token is skipped and reported, never applied
silently (rows without targets are dropped at preparation: tests/data/test_sft_rows.py)."""

import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from synthetic_task import SyntheticTask

from llm.config import load_config
from llm.train.loop import train


class EmptyAtStepTask(SyntheticTask):
    """The synthetic task whose second batch has every loss mask zeroed."""

    prepared = 0

    def prepare(self, models, host_batch, rng):
        EmptyAtStepTask.prepared += 1
        if EmptyAtStepTask.prepared == 2:
            host_batch = {**host_batch, "loss_mask": np.zeros_like(host_batch["loss_mask"])}
        return host_batch


def test_a_batch_without_targets_is_reported_and_not_applied(tmp_path, capsys):
    config = load_config("configs/pretrain.py:model=tiny", [
        f"workdir={tmp_path}", "total_steps=3", "batch_size=8", "seq_len=32",
        "checkpoint.every_steps=1", "checkpoint.keep=5", "eval.every_steps=0",
        "log.every_steps=1", "optim.warmup_steps=1", "mesh.shape={'data': 8}",
        "checkpoint.async_save=false"])
    train(config, EmptyAtStepTask(config))
    assert "step 2: no target tokens in the whole batch" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["empty_batch"] for r in rows] == [0.0, 1.0, 0.0]

    def params(step):
        restored = ocp.PyTreeCheckpointer().restore(tmp_path / "checkpoints" / str(step) /
                                                    "state")
        return [np.asarray(x) for x in jax.tree.leaves(restored["params"])]

    for a, b in zip(params(1), params(2), strict=True):
        np.testing.assert_array_equal(a, b)  # weight decay and moments did not move them
    assert any(not np.array_equal(a, b) for a, b in zip(params(2), params(3), strict=True))
