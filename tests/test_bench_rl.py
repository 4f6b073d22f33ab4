"""scripts/bench_rl.py runs end to end on a tiny model and ends with its JSON line."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_rl_reports_the_split_and_the_overhead_check():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rl.py"), "--size=tiny",
                           "--prompts=2", "--generations=2", "--new_tokens=4",
                           "--prompt_len=4", "--steps=1", "--peer=none"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ours_samples_per_s"] > 0
    assert result["ours_rollout_s"] + result["ours_update_s"] <= result["ours_step_s"] * 1.001
    assert result["overhead_ratio"] == pytest.approx(
        result["ours_step_s"] / (result["sampler_alone_s"] + result["train_step_alone_s"]),
        abs=2e-3)
