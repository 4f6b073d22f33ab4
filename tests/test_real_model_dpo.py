"""LoRA DPO on SmolLM2-135M-Instruct (llm/demo/smollm2) teaches a sign-off the imported model
never writes, with the demo stage's own recipe (llm/demo/smollm2/dpo.py: STEPS, SETTINGS):
on the 32 held-out questions the implicit reward ranks the signed reply first and sampled
replies carry the sign-off, for every training seed."""

from __future__ import annotations

import pytest

from llm.demo.smollm2 import data
from llm.demo.smollm2 import dpo as stage

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def trained(smollm2_dir, tmp_path_factory):
    """seed -> the workdir of a stage run with that training seed (each trained once)."""
    root = tmp_path_factory.mktemp("real_dpo")
    files = data.write_all(root / "data")
    runs = {}

    def run(seed: int):
        if seed not in runs:
            runs[seed] = root / f"seed{seed}"
            stage.train_dpo(smollm2_dir, files["preferences"], runs[seed], seed=seed,
                            steps=stage.STEPS)
        return runs[seed]
    return run


@pytest.mark.slow
def test_lora_dpo_teaches_the_sign_off(smollm2_dir, trained):
    questions = data.HELD_OUT_QUESTIONS
    assert len(questions) >= 32
    base = stage.sign_off_rate(f"hf:{smollm2_dir}", questions, seed=0)
    assert base <= 0.05, base  # the imported model does not sign off by itself

    workdir = trained(0)
    accuracy = stage.implicit_reward_accuracy(workdir, smollm2_dir,
                                              data.preference_rows(questions))
    replies = stage.sampled_replies(str(workdir), questions, seed=0)
    rate = sum(map(data.has_sign_off, replies)) / len(replies)
    print(f"held-out: implicit-reward accuracy {accuracy:.2f}, sign-off {base:.2f} -> "
          f"{rate:.2f}")
    assert accuracy >= 0.8, accuracy
    assert rate >= 0.5, replies


@pytest.mark.slow
@pytest.mark.long
def test_lora_dpo_sign_off_holds_for_every_training_seed(trained):
    questions = data.HELD_OUT_QUESTIONS
    rates = [stage.sign_off_rate(str(trained(seed)), questions, seed=seed) for seed in SEEDS]
    print(f"held-out sign-off rate by training seed {SEEDS}: {rates}")
    assert min(rates) >= 0.5, rates
