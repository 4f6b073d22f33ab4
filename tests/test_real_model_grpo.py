"""LoRA GRPO on SmolLM2-135M-Instruct (llm/demo/smollm2) with a reward module of the user's own
(`rl.reward_modules=llm.demo.smollm2.word_limit`, replies of at most 8 words), driven through
scripts/train.py as a user runs it, with the demo stage's own recipe.

Threshold (as tests/test_grpo_outcome.py): the mean held-out reward over sampling seeds 0/1/2
after training must exceed the base's mean plus twice its spread (max - min over the same
seeds), both measured here on the 32 held-out questions (in no training prompt); and replies
must still average at least 3 words, so an empty or one-word reply is no way to win.

Measured 2026-12-07 on 2 shared CPU cores: base -0.148 / -0.422 / -0.156 (threshold 0.305),
after 4 updates 0.85 / 0.99 / 0.94 at 6.3 words (training seeds 1 and 2: means 0.80, 0.94).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from llm.demo.smollm2 import data
from llm.demo.smollm2 import grpo as grpo_stage

ROOT = pathlib.Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)
MIN_WORDS = 3


@pytest.mark.slow
def test_lora_grpo_on_a_user_reward_module_shortens_held_out_replies(smollm2_dir, tmp_path):
    prompts = data.write_all(tmp_path / "data")["prompts"]
    trained = {json.loads(line)["prompt"] for line in prompts.read_text().splitlines()}
    questions = [q for q, _ in data.HELD_OUT_QUESTIONS]
    assert len(questions) == 32 and not trained & set(questions)

    before = grpo_stage.held_out_rewards(f"hf:{smollm2_dir}", questions, SEEDS)
    workdir = tmp_path / "run"
    # One CPU device, as the demo trains, and this checkout's `llm`, not an installed one.
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config=configs/grpo.py:lora,model=init_from",
         f"--config.init_from=hf:{smollm2_dir}", f"--config.data.path={prompts}",
         f"--config.workdir={workdir}",
         *(f"--config.{o}" for o in grpo_stage.SETTINGS),
         f"--config.total_steps={grpo_stage.STEPS}",
         f"--config.checkpoint.every_steps={grpo_stage.STEPS}"],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, XLA_FLAGS="", PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    logged = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert any("rewards/at_most_words" in row for row in logged)  # the user's function scored
    after = grpo_stage.held_out_rewards(str(workdir), questions, SEEDS)

    base = [r for r, _ in before]
    threshold = sum(base) / len(base) + 2 * (max(base) - min(base))
    reward = sum(r for r, _ in after) / len(after)
    words = sum(w for _, w in after) / len(after)
    print(f"held-out reward: base {before} -> GRPO {after}; {reward:.3f} > {threshold:.3f}")
    assert reward > threshold, (before, after, threshold)
    assert words >= MIN_WORDS, after
