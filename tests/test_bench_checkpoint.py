"""scripts/bench_checkpoint.py runs end to end on the tiny model and ends with its JSON."""

import pytest
from test_bench_scripts import run_script


@pytest.mark.slow
def test_bench_checkpoint_times_both_variants(tmp_path):
    result = run_script("bench_checkpoint.py", "--model=tiny", "--rounds=2", f"--dir={tmp_path}")
    for kind in ("save", "restore"):
        assert result["ours_s"][kind] > 0 and result["plain_s"][kind] > 0
        assert result["ratio"][kind] == pytest.approx(
            result["ours_s"][kind] / result["plain_s"][kind], abs=0.01)
    assert result["hash_gb_per_s"] > 0
    assert list(tmp_path.iterdir()) == []  # every round's checkpoints removed
