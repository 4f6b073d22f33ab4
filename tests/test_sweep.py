"""Sweeps without training: expansion and names, bad keys refused up front, the SLURM dry
run, statuses read from workdirs, FLOP totals and mean ± std over seeds."""

import json
import shlex
import subprocess
import sys

import pytest

from configs.sweeps.base import sweep_config
from llm.config import ConfigError
from llm.sweep import results, runner
from llm.sweep.spec import expand


def sweep_in(folder, **kw):
    sweep = sweep_config("configs/pretrain.py:model=tiny", **kw)
    sweep.folder = str(folder)
    return sweep


def test_runs_are_the_run_sets_times_the_grid_times_the_seeds(tmp_path):
    sweep = sweep_in(tmp_path, runs=[{"model.d_model": 32}, {"model.d_model": 64}],
                     grid={"optim.lr": [1e-3, 3e-4], "total_steps": [10]}, seeds=(0, 1),
                     fixed={"batch_size": 4})
    runs = expand(sweep)
    assert len(runs) == 8 and len({r.workdir for r in runs}) == 8
    first = runs[0]
    # named by what varies; what every run shares (total_steps, batch_size) is fixed
    assert first.name == "d_model=32-lr=0.001-seed=0"
    assert first.fixed == {"batch_size": 4, "total_steps": 10}
    assert first.group == "d_model=32-lr=0.001"
    assert f"--config.workdir={tmp_path / first.name}" in first.flags("b.py")


@pytest.mark.parametrize("where", ["grid", "fixed", "runs"])
def test_an_unknown_override_key_is_refused_before_any_run(tmp_path, where):
    spec = {"grid": {"grid": {"optim.lrr": [1e-3]}}, "fixed": {"fixed": {"optim.lrr": 1e-3}},
            "runs": {"runs": [{"optim.lrr": 1e-3}]}}[where]
    sweep = sweep_in(tmp_path / "sweep", **spec)
    with pytest.raises(ConfigError, match=r"optim\.lrr: unknown config key; did you mean "
                                          r"optim\.lr"):
        runner.run_sweep(sweep)
    assert not (tmp_path / "sweep").exists()  # nothing started, nothing written


def test_a_bad_value_and_a_reserved_key_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="total_steps=many: expected an integer"):
        runner.run_sweep(sweep_in(tmp_path, grid={"total_steps": ["many"]}))
    with pytest.raises(ConfigError, match="sets 'workdir'"):
        expand(sweep_in(tmp_path, fixed={"workdir": "x"}))
    with pytest.raises(ConfigError, match="folder is required"):
        expand(sweep_config("configs/pretrain.py"))


def test_slurm_dry_run_prints_one_array_job_carrying_each_runs_overrides(tmp_path, capsys):
    lrs = [1e-3, 3e-4, 1e-4]
    sweep = sweep_in(tmp_path, grid={"optim.lr": lrs}, seeds=(0,))
    sweep.executor, sweep.slurm.max_parallel = "slurm", 2
    runner.run_sweep(sweep, dry_run=True)
    lines = capsys.readouterr().out.splitlines()
    sbatch = [shlex.split(line) for line in lines if line.startswith("sbatch ")]
    assert len(sbatch) == 1 and "--array=0-2%2" in sbatch[0]
    assert sbatch[0][-2].endswith("launch_slurm.sh")
    tasks = [line for line in lines if line.strip().startswith("task ")]
    assert len(tasks) == 3
    for index, (line, lr) in enumerate(zip(tasks, lrs, strict=True)):
        argv = shlex.split(line.split(":", 1)[1])
        assert line.strip().startswith(f"task {index}:") and argv[0] == "srun"
        assert f"--config.optim.lr={lr!r}" in argv
        assert f"--config.workdir={tmp_path / f'lr={lr!r}'}" in argv


def _workdir(tmp_path, name, codes=(), steps=(), total=6, log=""):
    workdir = tmp_path / name
    (workdir / "checkpoints").mkdir(parents=True)
    for step in steps:
        (workdir / "checkpoints" / str(step)).mkdir()
    (workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1").mkdir()  # never committed
    (workdir / "config.json").write_text(json.dumps({"task": "pretrain",
                                                     "resolved": {"total_steps": total}}))
    (workdir / "attempts.jsonl").write_text("".join(
        json.dumps({"exit_code": c, "wall_s": 2.0}) + "\n" for c in codes))
    (workdir / "train.log").write_text(log)
    return workdir


def test_status_comes_from_the_workdir_and_the_exit_code(tmp_path):
    def status(*args, **kw):
        return results.status_of(_workdir(tmp_path, str(len(list(tmp_path.iterdir()))),
                                          *args, **kw), 6)

    assert status((0,), (3, 6)) == ("finished", "")
    assert status((0,), (3,), log="early stopping at step 3: no eval improvement") == \
        ("finished", "")
    assert status((0,), (3,)) == ("unfinished", "")  # stopped by a signal short of its steps
    assert status((2, 75), (3,)) == ("unfinished", "")
    assert status((), (3,)) == ("unfinished", "")
    assert status((), ()) == ("pending", "")
    old = "=== sweep attempt 1 ===\nerror: an old problem\n"
    failed = status((1, 2), (), log=old + "=== sweep attempt 2 ===\nstep 1 ...\n"
                    "error: step 2: non-finite loss (nan)\n")
    assert failed == ("failed", "step 2: non-finite loss (nan)")
    crashed = status((1,), (), log="Traceback (most recent call last):\nKeyError: 'x'\n")
    assert crashed == ("failed", "KeyError: 'x'")


def test_totals_sum_each_logged_step_over_the_steps_it_stands_for():
    records = [{"step": 1, "tokens": 10.0, "flops": 100.0}, {"step": 1, "eval_loss": 3.0},
               {"step": 4, "tokens": 10.0, "flops": 100.0}, {"step": 6, "tokens": 20.0}]
    assert results._integrate(records, "tokens") == 10 + 3 * 10 + 2 * 20
    assert results._integrate(records, "flops") == 400.0
    assert results._integrate(records, "mfu") is None


def test_seeds_pool_into_mean_and_std_of_finished_runs():
    rows = [{"group": "lr=1", "lr": 1, "status": "finished", "final_eval_loss": v}
            for v in (2.0, 4.0)] + [
        {"group": "lr=1", "lr": 1, "status": "failed", "final_eval_loss": None},
        {"group": "lr=2", "lr": 2, "status": "finished", "final_eval_loss": 5.0}]
    summary = {s["group"]: s for s in results.aggregate(rows, ["lr"])}
    assert summary["lr=1"]["final_eval_loss"] == 3.0
    assert summary["lr=1"]["final_eval_loss_std"] == pytest.approx(2 ** 0.5)
    assert (summary["lr=1"]["finished"], summary["lr=1"]["seeds"]) == (2, 3)
    assert summary["lr=2"]["final_eval_loss_std"] == 0.0
    table = results.summary_markdown(list(summary.values()), ["lr"], "final_eval_loss")
    assert "| 1 | 2/3 | 3 ± 1.4 |" in table


def test_task_metrics_from_the_evaluation_stage_become_columns():
    records = [{"step": 5, "eval_loss": 3.0, "eval_accuracy": 0.1},
               {"step": 10, "eval_loss": 2.5, "eval_accuracy": 0.4, "eval_nll": 2.5}]
    assert results.eval_columns(records) == {"eval_accuracy": 0.4, "eval_nll": 2.5}


def test_the_launcher_refuses_sweep_runs_outside_an_array_job(tmp_path):
    runs = tmp_path / "runs.txt"
    runs.write_text("/w --config=c.py\n")
    script = str(runner.execute.LAUNCH_SLURM)
    env = {"DRY_RUN": "1", "PATH": "/usr/bin:/bin"}
    outside = subprocess.run(["bash", script, f"--sweep_runs={runs}"], env=env,
                             capture_output=True, text=True)
    assert outside.returncode != 0 and "needs an array job" in outside.stderr
    past_end = subprocess.run(["bash", script, f"--sweep_runs={runs}"],
                              env={**env, "SLURM_ARRAY_TASK_ID": "1"},
                              capture_output=True, text=True)
    assert past_end.returncode == 2 and "no line for array task 1" in past_end.stderr


def test_the_cli_reports_a_bad_key_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "scripts/sweep.py",
                          "--config=configs/sweeps/chinchilla_tiny.py",
                          f"--config.folder={tmp_path}", "--config.grid=(('optim.lrr', [1]),)"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "optim.lrr: unknown config key; did you mean optim.lr" in out.stderr


def test_knobs_that_move_together_get_one_plot(tmp_path):
    from llm.sweep import plots

    rows = [{"run": f"r{i}", "status": "finished", "model.d_model": d, "model.d_ff": 3 * d,
             "total_steps": s, "final_eval_loss": 5.0 - d / 100 - s / 1000}
            for i, (d, s) in enumerate([(32, 10), (32, 20), (64, 10), (64, 20)])]
    paths = plots.metric_vs_knobs(rows, ["model.d_model", "model.d_ff", "total_steps"],
                                  "final_eval_loss", tmp_path)
    assert [p.name for p in paths] == ["final_eval_loss_vs_model_d_model.png",
                                       "final_eval_loss_vs_total_steps.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
