"""The README's first command: every demo stage runs end to end (shortened)."""

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_runs_every_stage(tmp_path):
    env = dict(os.environ, XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "scripts/demo.py", f"--workdir={tmp_path}", "--steps=20",
         "--sft_steps=20", "--files=150", "--post_steps=4"],
        capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = proc.stdout[proc.stdout.index("| stage |"):]
    for stage in ("data", "pretrain", "sample", "sft", "label", "reward", "dpo", "grpo", "ppo",
                  "eval"):
        assert f"| {stage} |" in table
    assert "answer accuracy" in table and (tmp_path / "curves.png").exists()
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert list(results) == ["base", "SFT", "DPO", "GRPO", "PPO"]  # every checkpoint measured
    for model in results.values():
        assert 0.0 <= model["heldout_accuracy"] <= 1.0 and model["bits_per_byte"] > 0
        assert len(model["heldout_accuracy_per_seed"]) == 3  # the outcome tests' seeds
    for label in ("DPO", "GRPO", "PPO"):  # each set against twice SFT's seed spread
        sft = results["SFT"]["heldout_accuracy_per_seed"]
        assert results[label]["margin"] == 2 * (max(sft) - min(sft))
        assert results[label]["clears"] == (results[label]["gain_over_sft"]
                                            > results[label]["margin"])
    assert "| model | held-out accuracy |" in table  # per-model rows below the table
