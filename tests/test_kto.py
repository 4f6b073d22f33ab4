"""KTO end to end: unpaired rows are prepared and loaded like the other row kinds, a file
without labels is one clear error, a short run learns a rule (fruit words desirable,
dirt words not) on held-out prompts, and a run killed with SIGKILL resumes bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dpo import COMMON, assert_kill_and_rerun_equals_uninterrupted

from llm.config import load_config
from llm.data import DataError, chat, loaders
from llm.data import prepare as prepare_lib
from llm.data.tokenizer import Tokenizer
from llm.train import get_task
from llm.train.loop import train

GOOD = ("apple", "pear", "plum", "fig", "lime", "kiwi")
BAD = ("rust", "mud", "ash", "soot", "grit", "slag")
TOPICS = ("river", "cloud", "stone", "field", "bread", "glass", "horse", "paper", "tower",
          "chair", "lamp", "road")


def rule_rows(n: int, seed: int) -> list[dict]:
    """A learnable rule: a completion of fruit words is desirable, one of dirt words is not;
    each prompt (three topic words) gets one of each."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        prompt = "say three words about " + " ".join(rng.choice(TOPICS, 3))
        for words, label in ((GOOD, True), (BAD, False)):
            rows.append({"prompt": prompt, "completion": " ".join(rng.choice(words, 3)),
                         "label": label})
    return rows


def prepare(inputs, out, tokenizer="", validation=0.0):
    data = load_config("configs/dpo.py:model=tiny").data
    data.inputs, data.output_dir, data.num_workers = str(inputs), str(out), 0
    data.split.validation = validation
    if tokenizer:
        data.tokenizer.path = str(tokenizer)
    else:
        data.tokenizer.vocab_size = 300
    return prepare_lib.prepare(data)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The rule's unpaired rows, 20% of the prompts held out (split by prompt)."""
    root = tmp_path_factory.mktemp("kto")
    path = root / "rule.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rule_rows(400, 0)))
    return prepare(path, root / "prepared", validation=0.2)


def test_unpaired_rows_are_prepared_and_loaded(tmp_path):
    rows = [{"prompt": f"question {i}", "completion": f"answer {i}", "label": i % 3 == 0}
            for i in range(12)]
    (tmp_path / "kto.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    prepared = prepare(tmp_path / "kto.jsonl", tmp_path / "prepared")
    tok = Tokenizer.load(prepared / "tokenizer")
    batch = next(iter(loaders.unpaired_loader(prepared, "train", 32, 12, 0, 1,
                                              shuffle=False)))
    assert sorted(batch["record_index"].tolist()) == list(range(12))
    for i, record in enumerate(batch["record_index"].tolist()):
        row = rows[record]
        prompt = chat.render_prompt(tok, row["prompt"])
        completion = chat.render_response(tok, row["completion"])
        n = len(prompt) + len(completion)
        assert batch["label"][i] == int(row["label"])
        assert batch["prompt_lengths"][i] == len(prompt)
        assert batch["tokens"][i, :n].tolist() == prompt + completion
        # loss on exactly the targets that are completion tokens
        assert batch["loss_mask"][i].tolist() == ([0.0] * (len(prompt) - 1)
                                                  + [1.0] * len(completion)
                                                  + [0.0] * (32 - n + 1))
    assert loaders.num_examples(prepared, "train", "unpaired", 32) == 12


def test_a_kto_file_without_labels_names_file_line_and_key(tmp_path):
    path = tmp_path / "kto.jsonl"
    path.write_text(json.dumps({"prompt": "a", "completion": "b", "label": False}) + "\n"
                    + json.dumps({"prompt": "c", "completion": "d"}) + "\n")
    with pytest.raises(DataError) as error:
        prepare(path, tmp_path / "prepared")
    message = str(error.value)
    assert f"{path}:2:" in message and "'label'" in message
    path.write_text(json.dumps({"prompt": "c", "completion": "d", "label": "yes"}) + "\n")
    with pytest.raises(DataError, match=r"kto.jsonl:1: 'label' is a str, expected true or "
                                        "false"):
        prepare(path, tmp_path / "prepared2")


def test_kto_is_not_mixed_with_paired_losses():
    with pytest.raises(ValueError, match="cannot be mixed with the paired losses"):
        get_task("dpo")(load_config("configs/dpo.py:model=tiny",
                                    ["dpo.loss_type=sigmoid,kto"]))
    with pytest.raises(ValueError, match="at least 2 rows per micro-batch"):
        get_task("dpo")(load_config("configs/dpo.py:model=tiny", [
            "dpo.loss_type=kto", "batch_size=4", "optim.grad_accum=4"])).check()


@pytest.mark.slow
def test_a_short_kto_run_learns_the_rule_on_held_out_prompts(prepared, tmp_path):
    """At the start (policy = reference) the loss is 0.5; after training, completions on
    unseen prompts that follow the rule get the higher implied reward."""
    train(load_config("configs/dpo.py:model=tiny", [
        f"workdir={tmp_path}", f"data.path={prepared}",
        "dpo.loss_type=kto", "total_steps=40", "optim.lr=1e-3", "checkpoint.every_steps=40",
        *[o for o in COMMON if not o.startswith(("eval.", "data.split"))],
        "eval.every_steps=40"]))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["loss"] == pytest.approx(0.5, abs=1e-6)
    held_out = [r for r in rows if "eval_loss" in r][-1]
    # desirable completions' log-prob ratio up, undesirable down, on unseen prompts: a
    # margin of 1.0 is 10 nats at β = 0.1, and a loss of 0.25 half the starting one
    assert held_out["eval_rewards/chosen"] > 0 > held_out["eval_rewards/rejected"], held_out
    assert held_out["eval_rewards/margins"] > 1.0, held_out
    assert held_out["eval_loss"] < 0.25, held_out


@pytest.mark.slow
def test_kto_sigkill_then_rerun_equals_uninterrupted(prepared, tmp_path):
    base = ""  # from scratch: the reference is the policy's random start
    kto = ["--config.dpo.loss_type=kto"]
    assert_kill_and_rerun_equals_uninterrupted(
        tmp_path, base, prepared, *kto, keys=("loss", "batch_hash", "kl", "rewards/margins"))
