"""scripts/bench_rl.py --algo=ppo runs end to end on a tiny model; its split adds up."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_rl_ppo_reports_the_time_split():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_rl.py"), "--algo=ppo",
                           "--size=tiny", "--prompts=2", "--generations=2", "--new_tokens=4",
                           "--prompt_len=4", "--steps=1"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    parts = [result[f"ours_{k}_s"] for k in ("rollout", "reward", "reference", "value",
                                             "update", "other")]
    assert all(p >= 0 for p in parts) and result["ours_rollout_s"] > 0
    assert sum(parts) == pytest.approx(result["ours_step_s"], abs=1e-3)
