"""Block-wise NF4 / int8 quantisation of frozen linear weights (the base of QLoRA).

A kernel [..., I, O] (any leading L axis of scan-stacked layers kept) is cut into blocks of
`block_size` consecutive input rows per output column, so the quantised arrays keep the
kernel's (in, out) logical axes and shard like it. Per block, absmax scales the weights to
[-1, 1]; NF4 stores the index of the nearest of 16 normal-quantile levels (two 4-bit codes
per uint8, consecutive input rows sharing a byte), int8 stores round(127 * w / absmax).

Scales are either bf16, or double-quantised (QLoRA): per group of up to 256 output columns,
absmax - mean is stored as int8 with an fp32 second-level scale and the fp32 mean. NF4 with
block 64 and double quantisation costs 0.5 + 1/64 + 8/(64 * 256) ≈ 0.52 bytes per weight.

`QuantDense` replaces `llm.model.Dense`; its __call__ dequantises the kernel in the compute
dtype right before the dot, so only one layer's float weights exist at a time under scan.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm import model as model_lib
from llm.peft import modules

KINDS = ("nf4", "int8")
# Every linear layer inside the blocks; the LM / score heads stay in float.
DEFAULT_QUANT_TARGETS = r"(attn|mlp)/\w+_proj$"

# The 16 NF4 levels (QLoRA, Dettmers et al. 2023; bitsandbytes' table).
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0)


class QuantConfigError(ValueError):
    """A quantisation setting that does not fit the model; names the key."""


class QuantizedWeight(nnx.Variable):
    """Codes and scales of a quantised kernel: frozen buffers, never trained."""


def _scale_group(d_out: int, limit: int = 256) -> int:
    """Largest divisor of d_out that is <= limit (the double-quantisation group)."""
    return max(g for g in range(1, min(d_out, limit) + 1) if d_out % g == 0)


AUTO_BLOCK = 64  # the largest block `quant_block_size=0` picks (QLoRA's size)


def resolve_block_size(block_size: int, d_in: int) -> int:
    """The block size for a kernel of input width `d_in`: `block_size` itself, which must be
    an even divisor of it, or for 0 the largest even divisor of it up to 64 (so any width
    a model has, e.g. 96 = 4 heads x 24, quantises without the user choosing)."""
    if block_size == 0:
        even = [b for b in range(2, min(d_in, AUTO_BLOCK) + 1, 2) if d_in % b == 0]
        if even:
            return even[-1]
    if block_size <= 0 or block_size % 2 or d_in % block_size:
        raise QuantConfigError(
            f"peft.quant_block_size={block_size}: expected an even divisor of the input "
            f"width {d_in}, or 0 to pick one per layer")
    return block_size


def quantize(w: jax.Array, kind: str = "nf4", block_size: int = 64,
             double_quant: bool = True) -> dict[str, jax.Array]:
    """Quantise w[..., I, O] block-wise along I (`block_size` 0: chosen per width, see
    `resolve_block_size`); returns the arrays `dequantize` needs."""
    if kind not in KINDS:
        raise QuantConfigError(f"peft.quant={kind!r}: expected one of {KINDS}")
    *lead, d_in, d_out = w.shape
    block_size = resolve_block_size(block_size, d_in)
    w32 = w.astype(jnp.float32).reshape(*lead, d_in // block_size, block_size, d_out)
    absmax = jnp.max(jnp.abs(w32), axis=-2)  # [..., I/bs, O]
    safe = jnp.where(absmax == 0, 1.0, absmax)[..., None, :]
    unit = w32 / safe
    if kind == "nf4":
        levels = jnp.asarray(NF4_LEVELS, jnp.float32)
        codes = jnp.searchsorted((levels[1:] + levels[:-1]) / 2, unit).astype(jnp.uint8)
        pairs = codes.reshape(*lead, d_in // 2, 2, d_out)
        codes = pairs[..., 0, :] | (pairs[..., 1, :] << 4)
    else:
        codes = jnp.round(unit * 127).astype(jnp.int8).reshape(*lead, d_in, d_out)
    out = {"codes": codes}
    if double_quant:
        g = _scale_group(d_out)
        grouped = absmax.reshape(*absmax.shape[:-1], d_out // g, g)
        mean = grouped.mean(-1, keepdims=True)
        scale2 = jnp.max(jnp.abs(grouped - mean), axis=-1, keepdims=True) / 127
        scale2 = jnp.where(scale2 == 0, 1.0, scale2)
        out["scales"] = jnp.round((grouped - mean) / scale2).astype(jnp.int8).reshape(
            absmax.shape)
        out["scale_mean"], out["scale_scale"] = mean[..., 0], scale2[..., 0]
    else:
        out["scales"] = absmax.astype(jnp.bfloat16)
    return out


def dequantize(q: dict[str, jax.Array], kind: str, block_size: int,
               dtype: Any = jnp.float32) -> jax.Array:
    """Rebuild w[..., I, O] in `dtype` from `quantize`'s arrays."""
    scales = q["scales"]
    if "scale_mean" in q:
        *lead, n_blocks, d_out = scales.shape
        groups = q["scale_mean"].shape[-1]
        grouped = scales.astype(jnp.float32).reshape(*lead, n_blocks, groups, d_out // groups)
        absmax = (grouped * q["scale_scale"][..., None] + q["scale_mean"][..., None]).reshape(
            scales.shape)
    else:
        absmax = scales.astype(jnp.float32)
    codes = q["codes"]
    if kind == "nf4":
        levels = jnp.asarray(NF4_LEVELS, dtype)
        pairs = jnp.stack([codes & 0xF, codes >> 4], axis=-2)  # [..., I/2, 2, O]
        unit = levels[pairs.reshape(*codes.shape[:-2], codes.shape[-2] * 2, codes.shape[-1])]
    else:
        unit = codes.astype(dtype) / 127
    *lead, d_in, d_out = unit.shape
    blocks = unit.reshape(*lead, d_in // block_size, block_size, d_out)
    return (blocks * absmax[..., None, :].astype(dtype)).reshape(*lead, d_in, d_out)


class QuantDense(nnx.Module):
    """A frozen, quantised `Dense`: dequantise the kernel in the compute dtype, then dot."""

    def __init__(self, dense: model_lib.Dense, kind: str = "nf4", block_size: int = 64,
                 double_quant: bool = True):
        kernel = dense.kernel
        self.kernel_shape = tuple(kernel.shape)
        self.axes = tuple(kernel.get_metadata()["axes"])
        self.kind = kind
        self.block_size = resolve_block_size(block_size, self.kernel_shape[-2])
        self.param_dtype = kernel[...].dtype
        self.dtype = dense.dtype
        arrays = quantize(kernel[...], kind, block_size, double_quant)
        self.codes = QuantizedWeight(arrays["codes"], axes=self.axes)
        self.scales = QuantizedWeight(arrays["scales"], axes=self.axes)
        if double_quant:
            self.scale_mean = QuantizedWeight(arrays["scale_mean"], axes=self.axes)
            self.scale_scale = QuantizedWeight(arrays["scale_scale"], axes=self.axes)
        else:
            self.scale_mean = self.scale_scale = None
        self.bias = dense.bias

    def arrays(self) -> dict[str, jax.Array]:
        """The quantised arrays by name (codes, scales[, scale_mean, scale_scale])."""
        out = {"codes": self.codes[...], "scales": self.scales[...]}
        if self.scale_mean is not None:
            out["scale_mean"], out["scale_scale"] = self.scale_mean[...], self.scale_scale[...]
        return out

    def kernel(self, dtype: Any = None) -> jax.Array:
        """The dequantised kernel [[L,] in, out] (compute dtype by default)."""
        return dequantize(self.arrays(), self.kind, self.block_size, dtype or self.dtype)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = jnp.dot(x.astype(self.dtype), self.kernel())
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y

    def to_dense(self) -> model_lib.Dense:
        """A float `Dense` holding the dequantised kernel (for export after merging)."""
        names = {jnp.dtype(v): k for k, v in model_lib.DTYPES.items()}
        cfg = model_lib.ModelConfig(dtype=names[jnp.dtype(self.dtype)],
                                    param_dtype=names[jnp.dtype(self.param_dtype)])
        dense = model_lib.Dense(1, 1, self.axes, cfg, nnx.Rngs(0))
        dense.kernel = nnx.Param(self.kernel(jnp.float32).astype(self.param_dtype),
                                 axes=self.axes)
        dense.bias = self.bias
        return dense


def quantize_model(model: nnx.Module, kind: str = "nf4", block_size: int = 64,
                   double_quant: bool = True,
                   target_modules: str = DEFAULT_QUANT_TARGETS) -> nnx.Module:
    """Replace the matching `Dense` modules by `QuantDense` (in place) and return the model."""
    try:
        paths = modules.select_modules(model, target_modules, "quant target_modules",
                                       (model_lib.Dense,))
    except modules.TargetModulesError as e:
        raise QuantConfigError(str(e)) from None
    for path in paths:
        dense = modules.get_module(model, path)
        modules.replace_module(model, path, QuantDense(dense, kind, block_size, double_quant))
    return model


def quantized_bytes(model: nnx.Module) -> dict[str, int]:
    """{'weights': quantised kernel parameters, 'bytes': their storage incl. all scales}."""
    weights = stored = 0
    for _, module in nnx.iter_modules(model):
        if isinstance(module, QuantDense):
            weights += math.prod(module.kernel_shape)
            stored += sum(a.size * a.dtype.itemsize for a in module.arrays().values())
    return {"weights": weights, "bytes": stored}

