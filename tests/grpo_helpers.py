"""A tiny SFT base on generated arithmetic and GRPO configs over it, for the GRPO tests."""

from __future__ import annotations

import pathlib

from llm.config import load_config
from llm.data import synthetic
from llm.train.loop import train


def arithmetic_base(root: pathlib.Path, steps: int = 4) -> tuple[pathlib.Path, pathlib.Path]:
    """(SFT workdir, RL prompt JSONL): a few SFT steps on generated arithmetic."""
    files = synthetic.generate("arithmetic", root / "arithmetic", n=300, difficulty=1, seed=0)
    sft = load_config("configs/sft.py:model=tiny", [
        f"workdir={root / 'sft'}", f"data.path={files['sft']}",
        "data.tokenizer.vocab_size=300", "batch_size=16", "seq_len=64",
        f"total_steps={steps}", "optim.lr=3e-3", "optim.warmup_steps=0",
        "eval.every_steps=0", f"checkpoint.every_steps={steps}", "mesh.shape={'data': 8}",
        "log.every_steps=100"])
    train(sft)
    return root / "sft", files["rl"]


def grpo_config(workdir, base, prompts, *extra: str):
    """A small GRPO run: 4 prompts x G = 4 per update, 16 new tokens, 2 steps."""
    return load_config("configs/grpo.py:model=tiny", [
        f"workdir={workdir}", f"init_from={base}", f"data.path={prompts}",
        "batch_size=16", "grpo.num_generations=4", "rl.max_prompt_length=32",
        "rl.max_completion_length=16", "total_steps=2", "optim.lr=1e-3",
        "mesh.shape={'data': 8}", "log.every_steps=1", "checkpoint.every_steps=100",
        "rl.log_samples_every=1", "rl.unstack_layers=False", *extra])
