"""Checks of the shared config keys, run before any data is read: a typo costs seconds."""

from __future__ import annotations

import jax
import ml_collections

from llm import attention as attn_lib
from llm import config as config_lib
from llm import optim, sharding
from llm.model import ModelConfig

WANDB_MODES = ("online", "offline", "disabled")


def check_run_settings(config: ml_collections.ConfigDict) -> None:
    """Keys that would otherwise fail after data preparation, at the first evaluation, or
    silently."""
    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            raise config_lib.ConfigError(f"{key}={value!r}: expected {expected}")

    need(config.seq_len >= 1, "seq_len", ">= 1")
    need(config.num_epochs >= 0, "num_epochs", ">= 0 (0 = use total_steps)")
    need(config.num_epochs > 0 or config.total_steps >= 1, "total_steps",
         ">= 1 (or set num_epochs)")
    need(0 <= config.seed < 2**32, "seed", "an integer in [0, 2**32)")
    need(config.eval.every_steps == 0 or config.eval.steps >= 1, "eval.steps",
         ">= 1 batches per evaluation (or eval.every_steps=0)")
    need(config.eval.min_delta >= 0, "eval.min_delta", ">= 0")
    need(config.train.z_loss >= 0, "train.z_loss", ">= 0")
    need(config.train.spike_sigma >= 0, "train.spike_sigma", ">= 0")
    need(0 < config.train.spike_decay < 1, "train.spike_decay", "in (0, 1)")
    need(config.train.spike_warmup >= 0, "train.spike_warmup", ">= 0")
    need(not config.log.wandb or config.log.wandb_mode in WANDB_MODES, "log.wandb_mode",
         f"one of {', '.join(WANDB_MODES)}")
    need(config.peft.method == "none" or bool(config.init_from), "init_from",
         f"a base model for peft.method={config.peft.method!r} (its adapters train on a "
         "frozen base: a workdir, checkpoint or hf:DIR)")
    optim.check(config.optim)
    for name, axis in config.mesh.rules.items():
        need(axis in ("", None, *sharding.MESH_AXES), f"mesh.rules.{name}",
             f"a mesh axis ({', '.join(sharding.MESH_AXES)}) or '' to replicate")
    model_config(config)  # enum and shape errors now, not after the data is prepared
    if config.init_from.startswith("hf:"):
        from llm.hf.config import load_config_json

        load_config_json(config.init_from[3:])
    elif config.init_from:
        from llm.loading import resolve_step_dir

        resolve_step_dir(config.init_from)


def check_loop_settings(config: ml_collections.ConfigDict, mesh) -> None:
    """Intervals and the batch's split over accumulation steps and the mesh."""
    for key in ("checkpoint.every_steps", "log.every_steps", "checkpoint.keep"):
        section, name = key.split(".")
        if int(config[section][name]) < 1:
            raise config_lib.ConfigError(f"{key}={config[section][name]}: expected >= 1")
    if int(config.eval.every_steps) < 0 or int(config.eval.patience) < 0:
        raise config_lib.ConfigError("eval.every_steps and eval.patience: expected >= 0")
    accum = int(config.optim.grad_accum)
    if config.batch_size <= 0 or config.batch_size % accum:
        raise config_lib.ConfigError(
            f"batch_size={config.batch_size}: expected a positive multiple of "
            f"optim.grad_accum={accum}")
    micro = config.batch_size // accum
    divisor = sharding.batch_divisor(mesh)
    if micro % divisor:
        raise config_lib.ConfigError(
            f"batch_size={config.batch_size}: each micro-batch ({micro} rows) must divide "
            f"over the mesh's data x fsdp = {divisor} devices")
    processes = jax.process_count()
    if config.batch_size % processes:  # each process loads batch_size / processes rows
        raise config_lib.ConfigError(
            f"batch_size={config.batch_size}: must divide over the run's {processes} "
            "processes")


# What `model=init_from` keeps from the run's config; every other field is the base's.
RUN_MODEL_KEYS = ("embed_dropout", "attn_dropout", "resid_dropout", "scan_layers", "remat",
                  "dtype", "param_dtype", "attention", "init_std", "prefix_len")


def base_architecture(init_from: str) -> dict:
    """The model fields of `init_from` (hf:DIR or a workdir) that `model=init_from` takes."""
    import dataclasses

    from llm import loading

    if not init_from:
        raise config_lib.ConfigError("model=init_from takes the architecture of init_from, "
                                     "and init_from is empty")
    if init_from.startswith("hf:"):
        from llm.hf import convert as hf

        base = dataclasses.asdict(hf.hf_model_config(init_from[3:]))
    else:
        step_dir = loading.resolve_step_dir(init_from)
        config_file, base_config = loading.step_config(step_dir)
        base = loading.run_model_values(base_config, str(config_file))
    return {k: v for k, v in base.items() if k not in RUN_MODEL_KEYS and k != "size"}


def model_config(config: ml_collections.ConfigDict, vocab_size: int | None = None
                 ) -> ModelConfig:
    """`config.model` with the data's vocabulary size and the `peft.*` overrides, validated."""
    from llm.peft import methods as peft

    if config.seq_len > config.model.max_seq_len:
        raise config_lib.ConfigError(
            f"seq_len={config.seq_len}: longer than model.max_seq_len={config.model.max_seq_len}")
    values = {k: v for k, v in config.model.items() if k != "size"}
    if config.model.size == "init_from":
        values.update(base_architecture(config.init_from))
    if vocab_size:
        values["vocab_size"] = vocab_size
    values.update(peft.model_config_overrides(config.peft))
    model_cfg = ModelConfig.from_dict(values)
    attn_lib.check_implementation(model_cfg.attention)
    return model_cfg
