"""Outcome: from the demo's SFT arithmetic model, with a reward model trained on
verifier-labelled pairs (right answer chosen, a near miss rejected), PPO raises the reward
model's mean score on held-out prompts, verifier accuracy does not fall, and the KL to the
SFT model over the last 20% of steps stays within 1.5 x target_kl."""

from __future__ import annotations

import numpy as np
import pytest
from ppo_outcome import PPO_STEPS, TARGET_KL, heldout, records, train_ppo, train_reward

SAMPLES = 8  # sampled answers per held-out question
SCORE_GAIN = 0.05  # the least rise of the held-out mean score that counts as raised
# 320 sampled answers each: one standard error of an accuracy near 0.5 is ~0.028; a fall
# within two of them is sampling noise, not a fall.
ACCURACY_NOISE = 0.056


@pytest.fixture(scope="module")
def outcome(sft_arithmetic, tmp_path_factory):
    root = tmp_path_factory.mktemp("ppo_outcome")
    reward = train_reward(root, sft_arithmetic)
    rows = sft_arithmetic.heldout_rows
    before = heldout(sft_arithmetic.workdir, reward, rows, samples=SAMPLES)
    workdir, _ = train_ppo(root, sft_arithmetic, reward)
    return before, heldout(workdir, reward, rows, samples=SAMPLES), records(workdir)


@pytest.mark.slow
# Not run in CI (run=False): a non-strict xfail cannot fail it, and its run costs CPU
# minutes there; `pytest --runxfail tests/test_ppo_outcome.py` runs it as a plain test.
@pytest.mark.xfail(strict=False, run=False, reason=(
    "not reached (docs/benchmarks.md, PPO outcome, 2026-12-07): on the sums start the best "
    "reward model ranks the SFT model's held-out answers right 63% of the time (this file's, "
    "on the generator's near-miss pairs: 49%); against it seven PPO settings (16-128 "
    "completions per update, lr 2e-5..1e-4, 40-300 steps, shared or separate value, beta "
    "0.3, the verifier weighted in) raised the held-out score by at most +0.015 (seed spread "
    "0.059), and accuracy fell wherever the KL passed ~0.5 (0.167 -> 0.128-0.139). "
    "2026-12-02, older start: the score rose, accuracy 0.47 -> 0.28."))
def test_ppo_raises_the_reward_model_score_within_the_kl_budget(outcome):
    (score_before, accuracy_before), (score_after, accuracy_after), rows = outcome
    assert [r["step"] for r in rows] == list(range(1, PPO_STEPS + 1))
    assert score_after > score_before + SCORE_GAIN, (score_before, score_after)
    assert accuracy_after >= accuracy_before - ACCURACY_NOISE, (accuracy_before,
                                                                accuracy_after)
    last = rows[-max(1, PPO_STEPS // 5):]
    assert np.mean([r["objective/kl"] for r in last]) <= 1.5 * TARGET_KL
