"""The `peft` config section and the glue from it to a model and a trainable filter.

The loop's order (base weights must be loaded before quantising or wrapping them):

    model_cfg = ModelConfig.from_dict({**config.model, **model_config_overrides(config.peft)})
    model = Transformer(model_cfg, rngs)              # then load `init_from` into it
    model = apply_peft(model, config.peft, rngs)
    graphdef, params, frozen = nnx.split(model, trainable_filter(config.peft), ...)
    # loss(params, frozen, batch): nnx.merge(graphdef, params, frozen)(...)
    # with peft.dropout > 0: frozen = with_dropout_rng(frozen, step_rng) inside the loss

`apply_peft` only uses traceable ops, so it also runs under `nnx.eval_shape` / `jax.jit`
for sharded initialisation (`llm.sharding.init_sharded`).
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections
from flax import nnx

from llm.model import Transformer
from llm.peft import lora, quant

METHODS = ("none", "lora", "qlora", "prefix")


class PeftConfigError(ValueError):
    """A `peft.*` setting that is out of range or does not fit the model."""


def peft_section() -> ml_collections.ConfigDict:
    """The `peft` config section with its defaults; every key is declared here only."""
    return ml_collections.ConfigDict({
        "method": "none",           # none | lora | qlora | prefix
        "rank": 8,                  # LoRA rank r
        "alpha": 16.0,              # LoRA scale alpha / r (rsLoRA: alpha / sqrt(r))
        "dropout": 0.0,             # dropout on the adapter input
        "rslora": False,
        "target_modules": lora.DEFAULT_TARGETS,  # regex (re.search) over module paths
        "quant": "nf4",             # qlora base storage: nf4 | int8
        "quant_block_size": 64,     # must divide each quantised input width; 0: per layer
                                    # the largest even divisor of its width up to 64
        "double_quant": True,       # int8 scales + fp32 second level; False: bf16 scales
        "prefix_len": 16,           # prefix tuning: learned key/value slots per layer
    })


def validate(peft_cfg: Any) -> None:
    """Raise PeftConfigError naming the first bad `peft.*` key."""
    def bad(key: str, expected: str) -> PeftConfigError:
        return PeftConfigError(f"peft.{key}={peft_cfg[key]!r}: expected {expected}")

    if peft_cfg.method not in METHODS:
        raise bad("method", f"one of {METHODS}")
    if peft_cfg.method in ("lora", "qlora"):
        if not isinstance(peft_cfg.rank, int) or peft_cfg.rank <= 0:
            raise bad("rank", "a positive integer")
        if not peft_cfg.alpha > 0:
            raise bad("alpha", "a positive number")
        if not 0.0 <= peft_cfg.dropout < 1.0:
            raise bad("dropout", "a rate in [0, 1)")
    if peft_cfg.method == "qlora":
        if peft_cfg.quant not in quant.KINDS:
            raise bad("quant", f"one of {quant.KINDS}")
        if peft_cfg.quant_block_size < 0 or peft_cfg.quant_block_size % 2:
            raise bad("quant_block_size", "0 (chosen per layer) or a positive even number")
    if peft_cfg.method == "prefix" and (not isinstance(peft_cfg.prefix_len, int)
                                        or peft_cfg.prefix_len <= 0):
        raise bad("prefix_len", "a positive integer")


def model_config_overrides(peft_cfg: Any) -> dict[str, Any]:
    """ModelConfig fields the method needs at construction ({'prefix_len': P} for prefix)."""
    validate(peft_cfg)
    return {"prefix_len": peft_cfg.prefix_len} if peft_cfg.method == "prefix" else {}


def apply_peft(model: Transformer, peft_cfg: Any, rngs: nnx.Rngs) -> Transformer:
    """Quantise and/or add adapters to a built model (in place); returns it."""
    validate(peft_cfg)
    method = peft_cfg.method
    if method == "prefix":
        if model.cfg.prefix_len != peft_cfg.prefix_len:
            raise PeftConfigError(
                f"peft.prefix_len={peft_cfg.prefix_len} but the model was built with "
                f"prefix_len={model.cfg.prefix_len}; build it with model_config_overrides()")
        return model
    if method == "qlora":
        try:
            quant.quantize_model(model, peft_cfg.quant, peft_cfg.quant_block_size,
                                 peft_cfg.double_quant)
        except quant.QuantConfigError as e:
            raise PeftConfigError(str(e)) from e
    if method in ("lora", "qlora"):
        try:
            lora.inject_lora(model, peft_cfg.rank, peft_cfg.alpha,
                             target_modules=peft_cfg.target_modules,
                             dropout=peft_cfg.dropout, rslora=peft_cfg.rslora, rngs=rngs)
        except lora.LoRAConfigError as e:
            raise PeftConfigError(str(e)) from e
    return model


def trainable_filter(peft_cfg: Any) -> Any:
    """The nnx filter of what gets gradients: all Params, LoRA A/B, or prefix k/v/gate."""
    validate(peft_cfg)
    return {"none": nnx.Param, "lora": nnx.LoRAParam, "qlora": nnx.LoRAParam,
            "prefix": lora.PREFIX}[peft_cfg.method]


def with_dropout_rng(frozen: Any, rng: jax.Array) -> Any:
    """The frozen state with fresh LoRA-dropout keys from `rng` (no-op without dropout)."""
    return lora.with_dropout_rng(frozen, rng)
