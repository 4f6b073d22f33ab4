"""Verifier-labelled pairs from the SFT model's own answers train a reward model end to end,
and that reward model then labels in `reward` mode (issues 18 and 20 meet here)."""

from __future__ import annotations

import json
import math

import pytest
from label_helpers import read_jsonl

from llm.config import load_config

PROMPTS = 160


@pytest.fixture(scope="module")
def labelled(sft_arithmetic, tmp_path_factory):
    """Verifier labels of the SFT model's answers, a reward model trained on them, and the
    labels that reward model then gives: (pair count, final metrics, logged rows, report)."""
    from llm.label import modes
    from llm.train.loop import train

    tmp_path = tmp_path_factory.mktemp("label_reward")
    rows = {}
    for line in sft_arithmetic.files["rl"].read_text().splitlines():
        row = json.loads(line)
        rows.setdefault(row["prompt"], row)
    prompts = tmp_path / "prompts.jsonl"
    # 160 of the start's 600 training questions keep the labelling short (and gave the same
    # late training accuracy as all 600: 0.60 against 0.56, 2026-12-03)
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

    result = train(load_config("configs/reward.py:model=tiny", [
        f"workdir={tmp_path / 'rm'}", f"init_from={sft_arithmetic.workdir}",
        # as labelled: repeated identical pairs kept (the default dedup, by the whole pair,
        # would drop them)
        f"data.path={out / 'preferences.jsonl'}", "data.split.validation=0.15",
        "data.dedup.exact=False", "data.dedup.near=False",
        "data.num_workers=0", "batch_size=16", "seq_len=64", "total_steps=150",
        "optim.lr=3e-4", "optim.warmup_steps=10", "eval.every_steps=150", "eval.steps=4",
        "log.every_steps=10", "checkpoint.every_steps=150", "mesh.shape={'data': 8}"]))
    logged = [json.loads(line) for line in (tmp_path / "rm" / "metrics.jsonl").read_text()
              .splitlines()]
    by_reward = modes.run(load_config("configs/label.py", [
        "mode=reward", f"label.reward_model={tmp_path / 'rm'}", *flags]))
    return pairs, result, logged, by_reward, read_jsonl(out / "preferences.jsonl")


@pytest.mark.slow
def test_verifier_labels_train_a_reward_model_that_labels_in_turn(labelled):
    pairs, result, logged, by_reward, prefs = labelled
    assert pairs >= 200 and math.isfinite(result["loss"])
    assert [r["step"] for r in logged if "loss" in r][-1] == 150
    (judge,) = [j for j in by_reward["judges"] if j.startswith("reward:")]
    assert by_reward["judges"][judge]["pairs"] > 0
    assert {r["judge"] for r in prefs} >= {"verifier:arithmetic", judge}


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason=(
    "not reached on the 'sums' start (2026-12-03): late training accuracy 0.56-0.60 over "
    "160 or 600 labelled questions at 150 steps, held-out 0.55-0.66; 300 steps or lr 1e-3 "
    "gave 0.64-0.66"))
def test_the_reward_model_learns_its_training_pairs(labelled):
    # Chance is 0.5. Ranking an unseen pair means checking the arithmetic, which the PPO and
    # reward issues take further; here the claim is only that the training pairs are learnt.
    _, result, logged, _, _ = labelled
    late = [r["accuracy"] for r in logged if "accuracy" in r][-5:]
    assert sum(late) / len(late) >= 0.7, (late, result)
