"""Reward model (full, LoRA, QLoRA or prefix): a scalar score head trained with the
Bradley-Terry loss on preference JSONL (`prompt`/`chosen`/`rejected`, optional `margin`).

python scripts/train.py --config=configs/reward.py:model=tiny --config.init_from=SFT_DIR \
    --config.data.path=preference.jsonl --config.workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs.dpo import preference_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Reward-model config; variants as configs/sft.py."""
    config = preference_config("reward", arg)
    config.optim.lr = 1e-4 if config.peft.method == "none" else 1e-3
    config.reward = ml_collections.ConfigDict(dict(
        center_rewards_coefficient=0.0,  # TRL's name; e.g. 0.01 keeps scores near zero
        truncation_mode="skip",  # pairs over seq_len: skip | keep_start | keep_end
        pad_to_multiple_of=0))  # batch width: 0 buckets 16, 24, 32, 48, ...; N multiple
    return config
