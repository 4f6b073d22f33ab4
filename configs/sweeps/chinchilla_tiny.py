"""Chinchilla on a laptop: three tiny LLaMA widths × three token budgets on the demo corpus.

python scripts/sweep.py --config=configs/sweeps/chinchilla_tiny.py --config.folder=runs/chin
python scripts/plan.py --sweep=runs/chin --budget=1e12

Every run uses the same batch shape, so a run's tokens are total_steps × 16 × 64; the budgets
span 4× and the sizes ~6× in parameters (embeddings included, as Hoffmann et al. count).
Runs log every step, so the table's FLOP and token totals are exact sums of the loop's
per-step counts.
"""

from __future__ import annotations

import ml_collections

from configs.sweeps.base import sweep_config

SIZES = [  # two layers, widening; the vocabulary (the demo tokenizer's) is the same for all
    {"model.d_model": 32, "model.n_heads": 2, "model.head_dim": 16, "model.d_ff": 96},
    {"model.d_model": 64, "model.n_heads": 4, "model.head_dim": 16, "model.d_ff": 160},
    {"model.d_model": 128, "model.n_heads": 4, "model.head_dim": 32, "model.d_ff": 352},
]


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The shipped sweep; `arg` is unused (sizes and budgets are the point of this file)."""
    if arg:
        raise ValueError(f"configs/sweeps/chinchilla_tiny.py: takes no variants, got {arg!r}")
    config = sweep_config(
        "configs/pretrain.py:model=tiny",
        runs=SIZES,
        grid={"total_steps": [60, 120, 240]},
        fixed={"batch_size": 16, "seq_len": 64, "optim.lr": 3e-3, "optim.warmup_steps": 10,
               "model.n_layers": 2, "eval.every_steps": 60, "eval.steps": 4,
               "checkpoint.every_steps": 60, "log.every_steps": 1,
               "checkpoint.async_save": False},
        seeds=(0,))
    config.shared_data = "demo"
    return config
