"""The benchmark scripts run end to end on a tiny model and end with their JSON line."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_script(name: str, *flags: str) -> dict:
    """Run scripts/<name> with flags; return its last stdout line, parsed as JSON."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *flags],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bench_sample_alternates_rounds_against_the_peer():
    pytest.importorskip("transformers")
    result = run_script("bench_sample.py", "--size=tiny", "--peer=hf", "--batch_sizes=1,2",
                        "--new_tokens=4", "--prompt_len=4", "--repeats=1", "--rounds=2")
    for batch in (1, 2):
        assert result[f"ours_tok_s_b{batch}"] > 0 and result[f"peer_tok_s_b{batch}"] > 0
        assert len(result[f"ratio_rounds_b{batch}"]) == 2
        assert result[f"ratio_b{batch}"] == pytest.approx(
            result[f"ours_tok_s_b{batch}"] / result[f"peer_tok_s_b{batch}"], abs=0.01)
    assert result["max_logit_diff"] < 1e-4  # the peer holds the same weights


@pytest.mark.parametrize("script, flag, says", [
    ("bench_sample.py", "--size=huge", "--size: expected one of"),
    ("bench_sample.py", "--rounds=0", "--rounds=0: 0 is not a positive integer"),
    ("bench_train.py", "--steps=0", "--steps=0: 0 is not a positive integer")])
def test_bench_flags_out_of_range_are_refused_when_parsed(script, flag, says):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / script), flag,
                           "--peer=none"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert done.returncode != 0
    assert says in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("flag, named", [("--model=huge", "model='huge'"),
                                         ("--dtype=float64", "model.dtype='float64'"),
                                         ("--attention=flash", "model.attention='flash'")])
def test_bench_train_refuses_bad_flags_in_one_line(flag, named):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_train.py"), flag],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(f"error: {named}")
    assert "Traceback" not in done.stderr


def test_bench_train_reports_the_fastest_round():
    result = run_script("bench_train.py", "--model=tiny", "--batch=2", "--seq=16",
                        "--steps=1", "--rounds=2", "--peer=none")
    assert result["ours_tokens_per_s"] > 0 and 0 < result["ours_mfu"]
    assert "ratio_rounds" not in result  # no peer, no ratio


@pytest.mark.slow
def test_bench_train_against_the_peer_records_each_round():
    pytest.importorskip("transformers")
    result = run_script("bench_train.py", "--model=tiny", "--batch=2", "--seq=16",
                        "--steps=1", "--rounds=2", "--peer=hf")
    assert result["hf_eager_tokens_per_s"] > 0
    assert len(result["ratio_rounds"]) == 2


@pytest.mark.slow
def test_bench_gpu_quick_runs_its_three_parts():
    # The accelerator script's CPU check: each part ends in its record, none in an error.
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_gpu.py"), "--quick"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads(done.stdout.strip().splitlines()[-1])
    assert record["bench"] == "gpu" and record["size"] == "tiny"
    for part, key in (("train", "ours_mfu"), ("decode", "b1_weight_bandwidth_fraction"),
                      ("grpo", "ours_update_s")):
        assert "error" not in record[part] and record[part][key] > 0, record[part]
