"""A real sweep through scripts/train.py: one run fails, the others finish, a rerun trains
nothing new, an unfinished run resumes."""

import json
import shutil

import pytest
from sweep_helpers import prepared_corpus, tiny_sweep

from llm.sweep import runner


@pytest.mark.slow
def test_sweep_survives_a_failed_run_and_a_rerun_trains_nothing(tmp_path):
    data = prepared_corpus(tmp_path / "corpus")
    lrs = [3e-3, 1e-3, 3e-4, 1e9]  # 1e9: a non-finite loss within a step or two
    sweep = tiny_sweep(tmp_path / "sweep", data, [{"optim.lr": lr} for lr in lrs])
    sweep.parallel = 2
    rows = runner.run_sweep(sweep)

    assert len(rows) == 4
    by_lr = {row["optim.lr"]: row for row in rows}
    assert [by_lr[lr]["status"] for lr in lrs] == ["finished"] * 3 + ["failed"]
    assert "non-finite loss" in by_lr[1e9]["error"]
    for lr in lrs[:3]:
        row = by_lr[lr]
        assert row["step"] == 6 and row["final_eval_loss"] is not None
        # every step logged, each counting 8 × 32 tokens and the task's FLOPs for them
        assert row["tokens"] == 6 * 8 * 32 and row["flops"] > 6 * row["tokens"] * 1e4
    table = (tmp_path / "sweep" / "results.md").read_text()
    assert table.count("| failed |") == 1 and "non-finite loss" in table
    assert (tmp_path / "sweep" / "loss_curves.png").exists()

    attempts = {r["run"]: (tmp_path / "sweep" / r["run"] / "attempts.jsonl").read_text()
                for r in rows}
    rows_again = runner.run_sweep(sweep)
    assert [r["status"] for r in rows_again] == [r["status"] for r in rows]
    for row in rows:  # no run was started again: not the finished ones, not the failed one
        assert (tmp_path / "sweep" / row["run"] / "attempts.jsonl").read_text() == \
            attempts[row["run"]]

    # A run stopped by its time limit (exit 75) after checkpoint 3 resumes from it.
    workdir = tmp_path / "sweep" / by_lr[3e-3]["run"]
    with (workdir / "attempts.jsonl").open("a") as f:
        f.write(json.dumps({"exit_code": 75, "wall_s": 1.0, "executor": "local"}) + "\n")
    shutil.rmtree(workdir / "checkpoints" / "6")
    rows_resumed = {r["run"]: r for r in runner.run_sweep(sweep)}
    assert rows_resumed[by_lr[3e-3]["run"]]["status"] == "finished"
    assert "resumed from" in (workdir / "train.log").read_text()
    assert len((workdir / "attempts.jsonl").read_text().splitlines()) == 3
