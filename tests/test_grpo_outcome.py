"""Outcome: from the demo's SFT arithmetic model, GRPO with the exact-answer verifier raises
held-out exact-answer accuracy (the mean over 8 sampled answers per held-out question).

Threshold: the gain of the mean accuracy over seeds 0-2 must exceed twice the spread
(max - min) of the SFT model's accuracy over the same seeds, both measured in this run.
The held-out questions are in no training input (checked here by exact prompt).
"""

import json

import pytest

from llm.config import load_config
from llm.train.loop import train

SEEDS = (0, 1, 2)
SETTINGS = ["batch_size=128", "grpo.num_generations=8", "rl.max_prompt_length=32",
            "rl.max_completion_length=16", "total_steps=40", "optim.lr=3e-5",
            "mesh.shape={'data': 8}", "log.every_steps=10", "checkpoint.every_steps=1000",
            "rl.log_samples_every=0"]


@pytest.mark.slow
# Not run in CI (run=False): a non-strict xfail cannot fail it, and its run costs CPU
# minutes there; `pytest --runxfail tests/test_grpo_outcome.py` runs it as a plain test.
@pytest.mark.xfail(strict=False, run=False, reason=(
    "not reached yet: on the 40-question start every setting tried (lr 1e-5..3e-4) stayed "
    "within noise or lowered held-out accuracy; on the 200-question `sums` start (SFT 0.170, "
    "threshold 0.041) lr 3e-5 gave +0.002 and 1e-4 gave -0.012 in 40 steps, and eight more "
    "settings (2026-12-04, up to 200 steps) at most +0.008: the objective turns over between "
    "update norms 1e-3 and 1e-2; see docs/benchmarks.md, GRPO outcome"))
def test_grpo_raises_heldout_accuracy(sft_arithmetic, tmp_path):
    import arithmetic_start

    heldout = {r["prompt"] for r in sft_arithmetic.heldout_rows}
    prompts = [json.loads(line)["prompt"] for line in
               sft_arithmetic.files["rl"].read_text().splitlines()]
    sft_prompts = {json.loads(line)["messages"][0]["content"] for line in
                   sft_arithmetic.files["sft"].read_text().splitlines()}
    assert heldout and not heldout & (set(prompts) | sft_prompts)  # removed by exact prompt
    before = [arithmetic_start.heldout_accuracy(sft_arithmetic.workdir,
                                                sft_arithmetic.heldout_rows, seed=s)
              for s in SEEDS]
    config = load_config("configs/grpo.py:model=tiny", [
        f"workdir={tmp_path}", f"init_from={sft_arithmetic.workdir}",
        f"data.path={sft_arithmetic.files['rl']}", "rl.reward_funcs=arithmetic", *SETTINGS])
    train(config)
    after = [arithmetic_start.heldout_accuracy(tmp_path, sft_arithmetic.heldout_rows, seed=s)
             for s in SEEDS]
    gain = sum(after) / len(after) - sum(before) / len(before)
    threshold = 2 * (max(before) - min(before))
    assert gain > threshold, (before, after, gain, threshold)
