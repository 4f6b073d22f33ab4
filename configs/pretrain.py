"""Pretraining: next-token prediction on packed windows of a text corpus.

python scripts/train.py --config=configs/pretrain.py:model=tiny --config.workdir=DIR
python scripts/train.py --config=configs/pretrain.py:model=small,data=web ...  # web text
"""

from __future__ import annotations

import ml_collections

from configs import base, data


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Pretraining config; `arg` picks variants: `model=<size>`, `data=<filter preset>`."""
    args = base.parse_arg(arg)
    config = base.base_config("pretrain", model=str(args.pop("model", "tiny")))
    preset = args.pop("data", "code")
    if args or preset not in data.PRESETS:
        raise ValueError(f"configs/pretrain.py: unknown variants {sorted(args) or arg}; "
                         f"expected model=<size> and data=<{'|'.join(data.PRESETS)}>")
    config.data.clean.filters = data.filters_section(preset)
    return config
