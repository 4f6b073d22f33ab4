"""Chinchilla on a laptop: four tiny LLaMA sizes × three token budgets on the demo corpus.

python scripts/sweep.py --config=configs/sweeps/chinchilla_tiny.py --config.folder=runs/chin
python scripts/plan.py --sweep=runs/chin --budget=1e14

Every run uses the same batch shape, so a run's tokens are total_steps × 8 × 64; the budgets
span 4× and the sizes ~10× in parameters. Runs log every step, so the table's FLOP and
token totals are exact sums of the loop's per-step counts.
"""

from __future__ import annotations

import ml_collections

from configs.sweeps.base import sweep_config

SIZES = [  # d_model, layers, heads × head width, MLP width; vocab from the demo tokenizer
    {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.n_kv_heads": 2,
     "model.head_dim": 16, "model.d_ff": 96},
    {"model.d_model": 48, "model.n_layers": 2, "model.n_heads": 2, "model.n_kv_heads": 2,
     "model.head_dim": 24, "model.d_ff": 128},
    {"model.d_model": 64, "model.n_layers": 2, "model.n_heads": 4, "model.n_kv_heads": 2,
     "model.head_dim": 16, "model.d_ff": 160},
    {"model.d_model": 96, "model.n_layers": 3, "model.n_heads": 4, "model.n_kv_heads": 2,
     "model.head_dim": 24, "model.d_ff": 256},
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The shipped sweep; `arg` is unused (sizes and budgets are the point of this file)."""
    if arg:
        raise ValueError(f"configs/sweeps/chinchilla_tiny.py: takes no variants, got {arg!r}")
    config = sweep_config(
        "configs/pretrain.py:model=tiny",
        runs=SIZES,
        grid={"total_steps": [40, 80, 160]},
        fixed={"batch_size": 8, "seq_len": 64, "optim.lr": 3e-3, "optim.warmup_steps": 10,
               "eval.every_steps": 40, "eval.steps": 4, "checkpoint.every_steps": 40,
               "log.every_steps": 1, "checkpoint.async_save": False},
        seeds=(0,))
    config.shared_data = "demo"
    return config
