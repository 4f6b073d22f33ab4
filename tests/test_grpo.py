"""The grpo task through the real loop: bad input stops before any rollout; a run logs its
rollouts and metrics and compiles its rollout once; a run killed between two updates of one
rollout batch and rerun logs the same metrics as an uninterrupted one."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from llm.config import ConfigError, load_config
from llm.rl import rollout as rollout_lib
from llm.rl.rewards import RewardError
from llm.train.loop import train

RUNNER = pathlib.Path(__file__).parent / "run_grpo.py"
TIMING = ("step_time_s", "tokens_per_s", "mfu", "time_rollout_s", "time_reward_s",
          "time_reference_s", "rollout_tokens_per_s")


def grpo_overrides(workdir, base, prompts, *extra):
    """A small run: 2 prompts x G = 4 per update, 2 updates per rollout batch, 4 steps."""
    return [f"workdir={workdir}", f"init_from={base}", f"data.path={prompts}",
            "batch_size=8", "grpo.num_generations=4", "grpo.steps_per_generation=2",
            "rl.max_prompt_length=32", "rl.max_completion_length=12", "total_steps=4",
            "optim.lr=1e-4", "mesh.shape={'data': 8}", "log.every_steps=1",
            "checkpoint.every_steps=1", "checkpoint.async_save=false",
            "rl.log_samples_every=2", *extra]


def grpo_config(*args, **kw):
    return load_config("configs/grpo.py:model=tiny", grpo_overrides(*args, **kw))


def records(workdir):
    rows = [json.loads(line) for line in (pathlib.Path(workdir) / "metrics.jsonl")
            .read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows if "loss" in r]


@pytest.mark.parametrize("override, error, match", [
    ("rl.reward_funcs=arithmetik", RewardError, "unknown reward.*did you mean arithmetic"),
    ("rl.reward_modules=no_such_module_19", RewardError,
     "module 'no_such_module_19' does not import"),
    ("rl.top_k=5", ConfigError, "importance_sampling_correction=True"),
    ("batch_size=6", ConfigError, "batch_size=6: expected a multiple of "
     "grpo.num_generations=4"),
])
def test_bad_input_fails_before_any_rollout(tmp_path, override, error, match):
    extra = [override] + (["grpo.importance_sampling_correction=False"]
                          if "top_k" in override else [])
    traces = rollout_lib.TRACES["rollout"]
    with pytest.raises(error, match=match):
        train(grpo_config(tmp_path / "run", "", tmp_path / "none.jsonl",
                          *extra))
    assert rollout_lib.TRACES["rollout"] == traces
    assert not (tmp_path / "run" / "rollouts").exists()


@pytest.mark.slow
def test_prompt_file_without_prompts(sft_arithmetic, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": f"just text number {i}"}) + "\n"
                            for i in range(40)))
    with pytest.raises(ConfigError, match="no RL prompts.*expected JSONL rows with 'prompt'"):
        train(grpo_config(tmp_path / "run", sft_arithmetic.workdir, data))
    assert not (tmp_path / "run" / "rollouts").exists()


@pytest.fixture(scope="module")
def uninterrupted(sft_arithmetic, tmp_path_factory):
    """A 4-step run in this process (2 rollout batches of 2 updates each)."""
    workdir = tmp_path_factory.mktemp("grpo_full")
    rollout_lib._sample.clear_cache()
    traces = rollout_lib.TRACES["rollout"]
    train(grpo_config(workdir, sft_arithmetic.workdir, sft_arithmetic.files["rl"]))
    return workdir, rollout_lib.TRACES["rollout"] - traces


@pytest.mark.slow
def test_a_run_logs_rollouts_and_metrics_and_compiles_once(uninterrupted):
    workdir, traces = uninterrupted
    assert traces == 1  # two rollout batches, other prompts and weights: one compile
    steps = records(workdir)
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for key in ("reward", "rewards/arithmetic", "accuracy", "kl", "entropy",
                "clip_ratio/low_mean", "clip_ratio/high_mean", "completion_length",
                "completion_length_max", "clipped_ratio", "frac_reward_zero_std"):
        assert key in steps[0], key
    # Steps 1 and 2 share a rollout batch: its figures are the same, the update's differ.
    assert steps[0]["reward"] == steps[1]["reward"]
    assert 0 < steps[0]["entropy"]
    rows = [json.loads(line) for line in (workdir / "rollouts" / "1.jsonl").read_text()
            .splitlines()]
    assert len(rows) == 16 and set(rows[0]) >= {"prompt", "completion", "rewards", "advantage"}
    assert sorted(p.name for p in (workdir / "rollouts").iterdir()) == ["1.jsonl", "3.jsonl"]


@pytest.mark.slow
def test_sigkill_between_two_updates_of_a_batch_then_rerun(sft_arithmetic, uninterrupted,
                                                           tmp_path):
    overrides = grpo_overrides(tmp_path, sft_arithmetic.workdir, sft_arithmetic.files["rl"])
    env = dict(os.environ)  # the same 8 CPU devices as this process
    killed = subprocess.run([sys.executable, str(RUNNER), "--kill-at-step=2", *overrides],
                            capture_output=True, text=True, env=env, timeout=600)
    assert killed.returncode == -9, killed.stdout + killed.stderr
    # Step 1 is checkpointed between the batch's two updates; step 2 was not.
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]
    rerun = subprocess.run([sys.executable, str(RUNNER), *overrides], capture_output=True,
                           text=True, env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resumed from" in rerun.stdout
    assert records(tmp_path) == records(uninterrupted[0])
