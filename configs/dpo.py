"""DPO and its relatives (full, LoRA, QLoRA or prefix) on preference JSONL
(`prompt`/`chosen`/`rejected` rows), starting from an SFT run; `dpo.loss_type=kto` trains
on unpaired rows (`prompt`/`completion`/`label`) instead.

python scripts/train.py --config=configs/dpo.py:model=tiny,lora --config.init_from=SFT_DIR \
    --config.data.path=preference.jsonl --config.workdir=DIR --config.dpo.loss_type=sigmoid
"""

from __future__ import annotations

import ml_collections

from configs import sft


def preference_config(task: str, arg: str | None) -> ml_collections.ConfigDict:
    """configs/sft.py's variants and data settings, for a task trained on preference pairs."""
    try:
        config = sft.get_config(arg)
    except ValueError as error:
        raise ValueError(str(error).replace("configs/sft.py", f"configs/{task}.py")) from None
    del config.sft
    config.task = task
    config.total_steps = 200
    config.batch_size = 8
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """DPO config; variants as configs/sft.py (`model=<size>`, `lora`, `qlora`, `prefix`)."""
    config = preference_config("dpo", arg)
    config.optim.lr = 5e-6 if config.peft.method == "none" else 5e-5
    config.dpo = ml_collections.ConfigDict(dict(
        loss_type="sigmoid",  # sigmoid|ipo|hinge|robust|simpo|orpo|sft, or a list: "sigmoid,sft";
        # or kto alone (unpaired rows; llm/train/kto.py)
        loss_weights="",  # comma-separated, one per loss_type; "" = all 1.0
        beta=0.1, label_smoothing=0.0,  # ε: conservative DPO (sigmoid), robust DPO (robust)
        simpo_gamma=0.5,  # SimPO's target margin γ
        desirable_weight=1.0, undesirable_weight=1.0,  # KTO's weights on the two labels
        precompute_ref_log_probs=False,  # TRL's name: score every pair with the reference
        # once before training (kept in workdir/ref_logps); no reference held or run per step
        truncation_mode="skip",  # pairs over seq_len: skip | keep_start | keep_end (counted)
        pad_to_multiple_of=0,  # batch width: its longest row rounded up to 16, 24, 32,
        # 48, 64, 96, ... (0), to a multiple of N (N), or seq_len (no trimming); llm/data/buckets.py
        eval_file="",  # prompt/answer JSONL scored with greedy decoding at each eval
        eval_examples=200, eval_verifier="arithmetic", eval_max_new_tokens=32))
    return config
