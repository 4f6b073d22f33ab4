"""The PPO outcome run from the demo's SFT arithmetic model (tests/arithmetic_start.py): a
reward model trained as the demo's reward stage trains it on the SFT model's own answers,
verified into pairs (the labelling stage), PPO against it with the verifier's reward
weighted in, and held-out figures before and after."""

from __future__ import annotations

import json
import pathlib

from ppo_helpers import CONFIG
from test_dpo_outcome import on_policy_pairs

from llm.config import load_config
from llm.demo import reward as reward_stage
from llm.train.loop import train

TARGET_KL = 1.0
PPO_STEPS = 600
# GRPO's outcome recipe (16 questions x 8 per update there; 128 prompts x 1 here), lr 1e-4
# after a 50-step warmup, one update per rollout batch; the verifier's 0/1 reward is added to
# the reward model's score at weight 1. Without it the policy exploits the reward model
# (docs/benchmarks.md, PPO outcome).
PPO_SETTINGS = ["batch_size=128", "ppo.num_mini_batches=1", "ppo.num_ppo_epochs=1",
                "rl.max_prompt_length=32", "rl.max_completion_length=16",
                f"total_steps={PPO_STEPS}", "optim.lr=1e-4", "optim.warmup_steps=50",
                f"ppo.target_kl={TARGET_KL}", "ppo.kl_horizon=2000", "ppo.beta=0.05",
                "ppo.value_model=shared", "rl.reward_funcs=arithmetic", "rl.reward_weights=1",
                "mesh.shape={'data': 8}", "log.every_steps=1",
                f"checkpoint.every_steps={PPO_STEPS}", "rl.log_samples_every=0",
                "rl.unstack_layers=False"]


def train_reward(root: pathlib.Path, start) -> pathlib.Path:
    """The demo reward stage's model from the SFT model on its own verified answers."""
    pairs = on_policy_pairs(start, root / "pairs")
    steps = reward_stage.STEPS
    train(load_config("configs/reward.py:model=tiny", [
        f"workdir={root / 'reward'}", f"init_from={start.workdir}", f"data.path={pairs}",
        *reward_stage.SETTINGS, f"total_steps={steps}", f"eval.every_steps={steps}",
        f"checkpoint.every_steps={steps}", "mesh.shape={'data': 8}"]))
    return root / "reward"


def train_ppo(root: pathlib.Path, start, reward, *extra: str) -> tuple[pathlib.Path, dict]:
    """PPO toward the reward model (plus the verifier), the KL controller aiming at TARGET_KL."""
    workdir = root / "ppo"
    final = train(load_config(CONFIG, [
        f"workdir={workdir}", f"init_from={start.workdir}",
        f"ppo.reward_model_path={reward}", f"data.path={start.files['rl']}", *PPO_SETTINGS,
        *extra]))
    return workdir, final


def records(workdir) -> list[dict]:
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


def heldout(init_from, reward, rows, samples: int = 4, seed: int = 0) -> tuple[float, float]:
    """(mean reward-model score, verifier accuracy) of sampled answers to held-out rows."""
    from flax import nnx

    from llm import scoring
    from llm.data.tokenizer import Tokenizer
    from llm.loading import load_model
    from llm.train.ppo_eval import heldout_scores

    loaded = load_model(str(init_from))
    scorer = scoring.Scorer.load(str(reward), seq_len=64)
    return heldout_scores(nnx.merge(loaded.graphdef, loaded.params),
                          Tokenizer.load(loaded.tokenizer_dir), scorer, rows, "arithmetic",
                          16, samples=samples, temperature=1.0, seed=seed)
