"""Verifier-labelled pairs from the SFT model's own answers train a reward model end to end,
and that reward model then labels in `reward` mode (issues 18 and 20 meet here)."""

from __future__ import annotations

import json

import pytest
from label_helpers import read_jsonl

from llm.config import load_config

PROMPTS = 160


@pytest.mark.slow
def test_verifier_labels_train_a_reward_model_that_labels_in_turn(sft_arithmetic, tmp_path):
    from llm.label import modes
    from llm.train.loop import train

    rows = {}
    for line in sft_arithmetic.files["rl"].read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["prompt"], row)
    prompts = tmp_path / "prompts.jsonl"
    # 160 training questions, as many as the pairs this budget learns (the start's 600 give
    # more pairs than 150 steps of 16 fit: late accuracy 0.56 measured 2026-12-03)
    prompts.write_text("".join(json.dumps(r) + "\n" for r in list(rows.values())[:PROMPTS]))
    out = tmp_path / "labels"
    flags = [f"output_dir={out}", "label.num_responses=8", "label.batch_size=50",
             "max_new_tokens=16", "temperature=1.0"]
    modes.run(load_config("configs/label.py", [
        "mode=sample", f"init_from={sft_arithmetic.workdir}", f"prompts_file={prompts}",
        *flags]))
    verified = modes.run(load_config("configs/label.py", [
        "mode=verifier", "label.verifier=arithmetic", *flags]))
    pairs = verified["judges"]["verifier:arithmetic"]["pairs"]
    assert pairs >= 200, verified

    result = train(load_config("configs/reward.py:model=tiny", [
        f"workdir={tmp_path / 'rm'}", f"init_from={sft_arithmetic.workdir}",
        # as labelled: repeated identical pairs kept (the default dedup, by the whole pair,
        # would drop them)
        f"data.path={out / 'preferences.jsonl'}", "data.split.validation=0.15",
        "data.dedup.exact=False", "data.dedup.near=False",
        "data.num_workers=0", "batch_size=16", "seq_len=64", "total_steps=150",
        "optim.lr=3e-4", "optim.warmup_steps=10", "eval.every_steps=150", "eval.steps=4",
        "log.every_steps=10", "checkpoint.every_steps=150", "mesh.shape={'data': 8}"]))
    # It learns its training pairs (chance is 0.5). Held-out pairs (`eval_accuracy`) stay
    # near chance at this size and budget (0.50 measured 2026-12-02): ranking an unseen
    # pair means checking the arithmetic, which the PPO and reward issues take further.
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text()
              .splitlines()]
    late = [r["accuracy"] for r in logged if "accuracy" in r][-5:]
    assert sum(late) / len(late) >= 0.7, (late, result)

    by_reward = modes.run(load_config("configs/label.py", [
        "mode=reward", f"label.reward_model={tmp_path / 'rm'}", *flags]))
    (judge,) = [j for j in by_reward["judges"] if j.startswith("reward:")]
    assert by_reward["judges"][judge]["pairs"] > 0
    prefs = read_jsonl(out / "preferences.jsonl")
    assert {r["judge"] for r in prefs} >= {"verifier:arithmetic", judge}
