"""A preference row's optional `margin` reaches the reward loss -log σ(r_c - r_r - margin)
through preparation, the loader and the training loop; a bad margin names file and line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llm.config import load_config
from llm.data import DataError, loaders
from llm.data import prepare as prepare_lib
from llm.train.loop import train


def write_pairs(path, margins):
    rows = []
    for i, margin in enumerate(margins):
        row = {"prompt": f"name a colour ({i})", "chosen": "red gold", "rejected": "blue ice"}
        if margin is not None:
            row["margin"] = margin
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(inputs, out):
    data = load_config("configs/reward.py:model=tiny").data
    data.inputs, data.output_dir, data.num_workers = str(inputs), str(out), 0
    data.split.validation, data.tokenizer.vocab_size = 0.0, 300
    return prepare_lib.prepare(data)


def reward_run(workdir, data):
    return load_config("configs/reward.py:model=tiny", [
        f"workdir={workdir}", f"data.path={data}", "batch_size=8", "seq_len=32",
        "total_steps=1", "log.every_steps=1", "eval.every_steps=0", "optim.lr=0.0",
        "checkpoint.every_steps=1", "checkpoint.async_save=false", "data.num_workers=0"])


def test_margins_are_loaded_per_pair(tmp_path):
    margins = [0.5 * i for i in range(7)] + [None]  # a row without one has margin 0
    prepared = prepare(write_pairs(tmp_path / "pairs.jsonl", margins), tmp_path / "prepared")
    batch = next(iter(loaders.preference_loader(prepared, "train", 32, 8, 0, 1,
                                                shuffle=False)))
    assert batch["margin"].dtype == np.float32
    assert sorted(batch["margin"].tolist()) == [0.0] + [0.5 * i for i in range(7)]


@pytest.mark.slow
def test_a_margin_raises_the_loop_loss_by_the_bradley_terry_amount(tmp_path):
    """Same pairs, same start: with margin m on every pair the first step's loss is
    mean(-log σ(d - m)) where without it is mean(-log σ(d)); at lr 0 d is the same model's
    score difference in both runs, so the two losses pin down d and must agree with it."""
    plain = prepare(write_pairs(tmp_path / "plain.jsonl", [None] * 8), tmp_path / "p")
    margin = prepare(write_pairs(tmp_path / "margin.jsonl", [2.0] * 8), tmp_path / "m")
    losses = {}
    for name, data in (("plain", plain), ("margin", margin)):
        train(reward_run(tmp_path / name, data))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text()
                .splitlines()]
        losses[name] = next(r for r in rows if "loss" in r)
    # every pair here is the same text, so d is one number: the score difference
    d = losses["plain"]["margin"]
    assert losses["plain"]["loss"] == pytest.approx(float(np.logaddexp(0, -d)), abs=1e-5)
    assert losses["margin"]["loss"] == pytest.approx(float(np.logaddexp(0, -(d - 2.0))),
                                                     abs=1e-5)


def test_a_bad_margin_names_file_and_line(tmp_path):
    path = write_pairs(tmp_path / "pairs.jsonl", [1.0, "big"])
    with pytest.raises(DataError, match=r"pairs.jsonl:2: 'margin' is 'big', expected a "
                                        "finite number"):
        prepare(path, tmp_path / "prepared")
