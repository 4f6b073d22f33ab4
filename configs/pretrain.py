"""Pretraining: next-token prediction on packed windows of a text corpus.

python scripts/train.py --config=configs/pretrain.py:model=tiny --config.workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs import base


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Pretraining config; `arg` picks variants: `model=<size>`."""
    args = base.parse_arg(arg)
    config = base.base_config("pretrain", model=str(args.pop("model", "tiny")))
    if args:
        raise ValueError(f"configs/pretrain.py: unknown variants {sorted(args)}; "
                         "expected model=<size>")
    return config
