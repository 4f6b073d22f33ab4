"""Composable helpers that every task config is built from (never copy a whole config)."""

from __future__ import annotations

import ml_collections

from configs import data, models
from llm.peft.methods import peft_section


def parse_arg(arg: str | None) -> dict[str, str | bool]:
    """`model=tiny,lora` → {'model': 'tiny', 'lora': True}."""
    out: dict[str, str | bool] = {}
    for part in (arg or "").split(","):
        part = part.strip()
        if not part:
            continue
        key, sep, value = part.partition("=")
        out[key.strip()] = value.strip() if sep else True
    return out


def optim_section() -> ml_collections.ConfigDict:
    """optax chain settings (llm/optim.py)."""
    return ml_collections.ConfigDict(dict(
        name="adamw", lr=3e-4, schedule="cosine", warmup_steps=100, min_lr_ratio=0.1,
        decay_fraction=0.2, weight_decay=0.1, b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0,
        grad_accum=1, decay_mask="default",
    ))


def mesh_section() -> ml_collections.ConfigDict:
    """Mesh shape over (data, fsdp, tensor) and logical-axis rules (llm/sharding.py)."""
    from llm.sharding import DEFAULT_RULES

    rules = ml_collections.ConfigDict({k: v or "" for k, v in DEFAULT_RULES.items()})
    return ml_collections.ConfigDict(dict(shape=dict(data=-1, fsdp=1, tensor=1), rules=rules))


def base_config(task: str, model: str = "tiny") -> ml_collections.ConfigDict:
    """Keys every task shares (DESIGN §3); tasks add their own section."""
    return ml_collections.ConfigDict(dict(
        task=task,
        workdir="",
        take_over_lock=False,  # take a workdir lock held by a run on another host
        seed=0,
        total_steps=1000,
        num_epochs=0,
        batch_size=16,
        seq_len=128,
        init_from="",
        model=models.model_config(model),
        data=data.data_section(),
        peft=peft_section(),
        optim=optim_section(),
        mesh=mesh_section(),
        checkpoint=dict(every_steps=200, keep=3, async_save=True),
        # tasks: llm/eval task names run at each evaluation too (e.g. "stdlib_bpb")
        eval=dict(every_steps=200, steps=8, patience=0, min_delta=0.0, tasks=""),
        log=dict(every_steps=10, wandb=False, wandb_project="llm", wandb_mode="online"),
        train=dict(z_loss=0.0, skip_spikes=False, spike_sigma=6.0, spike_warmup=20,
                   spike_decay=0.99),
    ))
