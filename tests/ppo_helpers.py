"""A tiny SFT base, a reward model on it and PPO configs over both, for the PPO tests."""

from __future__ import annotations

import pathlib

from llm.config import load_config
from llm.data import synthetic
from llm.train.loop import train

CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs/ppo.py") + ":model=tiny"


def reward_model(root: pathlib.Path, base, pairs, steps: int = 2, *extra: str
                 ) -> pathlib.Path:
    """A reward model trained `steps` steps on `pairs` from `base` (its tokenizer)."""
    config = load_config("configs/reward.py:model=tiny", [
        f"workdir={root / 'reward'}", f"init_from={base}", f"data.path={pairs}",
        "data.split.validation=0.0", "batch_size=16", "seq_len=64", f"total_steps={steps}",
        "optim.lr=1e-3", "optim.warmup_steps=0", "eval.every_steps=0",
        f"checkpoint.every_steps={steps}", "mesh.shape={'data': 8}", "log.every_steps=100",
        *extra])
    train(config)
    return root / "reward"


def arithmetic_base(root: pathlib.Path, steps: int = 4) -> tuple[pathlib.Path, pathlib.Path]:
    """(SFT workdir, RL prompt JSONL): a few SFT steps on generated arithmetic."""
    files = synthetic.generate("arithmetic", root / "arithmetic", n=300, difficulty=1, seed=0)
    train(load_config("configs/sft.py:model=tiny", [
        f"workdir={root / 'sft'}", f"data.path={files['sft']}",
        "data.tokenizer.vocab_size=300", "batch_size=16", "seq_len=64",
        f"total_steps={steps}", "optim.lr=3e-3", "optim.warmup_steps=0",
        "eval.every_steps=0", f"checkpoint.every_steps={steps}", "mesh.shape={'data': 8}",
        "log.every_steps=100"]))
    return root / "sft", files["rl"]


def ppo_start(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
    """(SFT workdir, reward workdir, RL prompt JSONL) of a few steps each."""
    base, prompts = arithmetic_base(root)
    return base, reward_model(root, base, prompts.parent / "preference.jsonl"), prompts


def ppo_overrides(workdir, base, reward, prompts, *extra: str) -> list[str]:
    """A small PPO run: 8 prompts per update, 2 minibatches x 2 epochs, 16 new tokens."""
    return [f"workdir={workdir}", f"init_from={base}", f"ppo.reward_model_path={reward}",
            f"data.path={prompts}", "batch_size=8", "ppo.num_mini_batches=2",
            "ppo.num_ppo_epochs=2", "rl.max_prompt_length=32", "rl.max_completion_length=16",
            "total_steps=4", "optim.lr=1e-3", "mesh.shape={'data': 8}", "log.every_steps=1",
            "checkpoint.every_steps=100", "rl.log_samples_every=1",
            "rl.unstack_layers=False", *extra]


def ppo_config(workdir, base, reward, prompts, *extra: str):
    """The config of `ppo_overrides`."""
    return load_config(CONFIG, ppo_overrides(workdir, base, reward, prompts, *extra))
