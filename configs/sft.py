"""Supervised fine-tuning (full, LoRA, QLoRA or prefix) on chat JSONL ('messages' rows).

python scripts/train.py --config=configs/sft.py:model=tiny,lora --config.init_from=PRETRAIN_DIR \
    --config.data.path=chat.jsonl --config.workdir=DIR
"""

from __future__ import annotations

import ml_collections

from configs import base

METHODS = ("lora", "qlora", "prefix")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """SFT config; variants: `model=<size>` and one of `lora`, `qlora`, `prefix`."""
    args = base.parse_arg(arg)
    config = base.base_config("sft", model=str(args.pop("model", "tiny")))
    chosen = [method for method in METHODS if args.pop(method, False)]
    if len(chosen) > 1:
        raise ValueError(f"configs/sft.py: variants {chosen}: choose one of {METHODS}")
    if chosen:
        config.peft.method = chosen[0]
    m = config.model
    if config.peft.method == "qlora" and any(
            w % config.peft.quant_block_size for w in (m.d_model, m.n_heads * m.head_dim, m.d_ff)):
        config.peft.quant_block_size = 0  # e.g. tiny's 96-wide attention output: per layer
    if args:
        raise ValueError(f"configs/sft.py: unknown variants {sorted(args)}; expected "
                         f"model=<size> and optionally one of {METHODS}")
    config.total_steps = 500
    config.optim.lr = 1e-4 if config.peft.method == "none" else 1e-3
    config.optim.warmup_steps = 20
    config.optim.weight_decay = 0.0
    config.data.split.validation = 0.05
    config.data.dedup.near = False  # instructions legitimately share long templates
    config.data.clean.enabled = False
    config.sft = ml_collections.ConfigDict(dict(
        eval_file="",  # prompt/answer JSONL scored with greedy decoding at each eval
        eval_examples=200, eval_verifier="exact",  # exact | arithmetic
        eval_max_new_tokens=32))
    return config
