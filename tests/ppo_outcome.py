"""The PPO outcome run from the demo's SFT arithmetic model (tests/arithmetic_start.py): a
reward model trained on verifier-labelled pairs (right answer chosen, a near miss
rejected), PPO against it, and held-out figures before and after."""

from __future__ import annotations

import json
import pathlib

from ppo_helpers import CONFIG

from llm.config import load_config
from llm.train.loop import train

TARGET_KL = 1.0
REWARD_STEPS = 150
PPO_STEPS = 40


def train_reward(root: pathlib.Path, start, steps: int = REWARD_STEPS) -> pathlib.Path:
    """A reward model from the SFT model on the start point's preference pairs."""
    train(load_config("configs/reward.py:model=tiny", [
        f"workdir={root / 'reward'}", f"init_from={start.workdir}",
        f"data.path={start.files['preference']}", "data.split.validation=0.0",
        "batch_size=16", "seq_len=64", f"total_steps={steps}", "optim.lr=1e-3",
        "optim.warmup_steps=10", "eval.every_steps=0", f"checkpoint.every_steps={steps}",
        "mesh.shape={'data': 8}", "log.every_steps=50"]))
    return root / "reward"


def train_ppo(root: pathlib.Path, start, reward, *extra: str) -> tuple[pathlib.Path, dict]:
    """PPO toward the reward model with the KL controller aiming at TARGET_KL."""
    workdir = root / "ppo"
    final = train(load_config(CONFIG, [
        f"workdir={workdir}", f"init_from={start.workdir}",
        f"ppo.reward_model_path={reward}", f"data.path={start.files['rl']}",
        "batch_size=16", "ppo.num_mini_batches=1", "ppo.num_ppo_epochs=2",
        "rl.max_prompt_length=32", "rl.max_completion_length=16", f"total_steps={PPO_STEPS}",
        "optim.lr=5e-5", f"ppo.target_kl={TARGET_KL}", "ppo.kl_horizon=2000",
        "ppo.beta=0.05", "ppo.value_model=separate", "rl.reward_funcs=arithmetic",
        "rl.reward_weights=0",
        "mesh.shape={'data': 8}", "log.every_steps=1", f"checkpoint.every_steps={PPO_STEPS}",
        "rl.log_samples_every=0", "rl.unstack_layers=False", *extra]))
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
