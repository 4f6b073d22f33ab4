"""LoRA and prefix adapters on a built `Transformer`: inject by regex, merge, adapter-only state.

`inject_lora` replaces every `Dense` (or quantised `QuantDense`) whose module path, written
'layers/attn/q_proj' (scan-stacked) or 'layers/3/attn/q_proj' (unrolled), matches a regex
by a `LoRADense` that keeps the base module and adds

    y = base(x) + dropout(x) @ lora_a_IR @ lora_b_RO * scale,   scale = alpha / r
                                                               (rsLoRA: alpha / sqrt(r))

with `lora_a` random and `lora_b` zero, so a fresh adapter returns the base output exactly.
Adapters are `nnx.LoRAParam`s carrying `axes` metadata (lora_a: (in_axis, None), lora_b:
(None, out_axis)), so `llm.sharding.state_shardings` places them on any mesh. Under
`scan_layers` they get the same leading L axis as the stacked base weights, and the model's
layer scan slices them with everything else.

The training flow keeps the pure boundary: `nnx.split(model, ADAPTERS, ...)` gives the
trainable adapters and the frozen rest; only the former get gradients and optimiser state.
LoRA dropout needs a key per step: `with_dropout_rng(frozen, rng)` writes one into the
frozen state (a zero key, the default, means no dropout, e.g. for evaluation).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm import model as model_lib
from llm.peft import modules, quant
from llm.peft.modules import get_module, module_path, replace_module

DEFAULT_TARGETS = r"(attn/[qkvo]_proj|mlp/(gate|up|down)_proj)$"
PREFIX_NAMES = ("prefix_k", "prefix_v", "prefix_gate")

# What an adapter checkpoint holds and what PEFT methods train.
PREFIX = nnx.Any(*(nnx.PathContains(name) for name in PREFIX_NAMES))
ADAPTERS = nnx.Any(nnx.LoRAParam, PREFIX)


class LoRAConfigError(ValueError):
    """A LoRA setting or adapter checkpoint that cannot be applied; names the key or file."""


class LoRADropoutKey(nnx.Variable):
    """Raw PRNG key data for LoRA dropout (all zeros: dropout off). Never trained."""


class LoRADense(nnx.Module):
    """A frozen base linear module plus a low-rank update: base(x) + drop(x) @ A @ B * scale."""

    def __init__(self, base: nnx.Module, rank: int, alpha: float, *, dropout: float = 0.0,
                 rslora: bool = False, rngs: nnx.Rngs):
        kernel_shape, axes = _base_kernel_info(base)
        *lead, d_in, d_out = kernel_shape
        in_axis, out_axis = axes
        bound = 1.0 / math.sqrt(d_in)  # kaiming-uniform(a=sqrt(5)), as in PEFT
        a = jax.random.uniform(rngs.params(), (*lead, d_in, rank), jnp.float32, -bound, bound)
        self.base = base
        self.lora_a = nnx.LoRAParam(a, axes=(in_axis, None))
        self.lora_b = nnx.LoRAParam(jnp.zeros((*lead, rank, d_out), jnp.float32),
                                    axes=(None, out_axis))
        self.scale = alpha / (math.sqrt(rank) if rslora else rank)
        self.dropout = float(dropout)
        if self.dropout > 0:
            self.dropout_key = LoRADropoutKey(jnp.zeros((*lead, 2), jnp.uint32), axes=(None,))
        self.dtype = base.dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        y = self.base(x)
        h = x.astype(self.dtype)
        if self.dropout > 0:
            data = self.dropout_key[...]
            keep = jax.random.bernoulli(jax.random.wrap_key_data(data), 1.0 - self.dropout,
                                        h.shape)
            keep = keep | jnp.all(data == 0)  # zero key: evaluation, no dropout
            h = jnp.where(keep, h / jnp.where(jnp.all(data == 0), 1.0, 1.0 - self.dropout),
                          0).astype(self.dtype)
        delta = jnp.dot(jnp.dot(h, self.lora_a[...].astype(self.dtype)),
                        self.lora_b[...].astype(self.dtype))
        return y + (delta * self.scale).astype(y.dtype)

    def delta_kernel(self) -> jax.Array:
        """scale * A @ B in float32, shaped like the base kernel ([L,] in, out)."""
        a, b = self.lora_a[...].astype(jnp.float32), self.lora_b[...].astype(jnp.float32)
        return jnp.einsum("...ir,...ro->...io", a, b) * self.scale


def _base_kernel_info(base: nnx.Module) -> tuple[tuple[int, ...], tuple[Any, Any]]:
    """(kernel shape incl. any leading L, (in_axis, out_axis)) of a Dense or QuantDense."""
    if isinstance(base, model_lib.Dense):
        return tuple(base.kernel.shape), tuple(base.kernel.get_metadata()["axes"])
    return tuple(base.kernel_shape), tuple(base.axes)


LINEAR_KINDS = (model_lib.Dense, quant.QuantDense, LoRADense)


def linear_modules(model: nnx.Module) -> Iterator[tuple[tuple[Any, ...], nnx.Module]]:
    """(path, module) of every linear module (Dense, QuantDense, LoRADense), outermost first."""
    return modules.outermost(model, LINEAR_KINDS)


def select_modules(model: nnx.Module, pattern: str, key: str = "peft.target_modules",
                   kinds: tuple[type, ...] | None = None) -> list[tuple[Any, ...]]:
    """Paths of linear modules whose 'a/b/c' path matches `pattern` (re.search); else error."""
    try:
        return modules.select_modules(model, pattern, key, LINEAR_KINDS, kinds)
    except modules.TargetModulesError as e:
        raise LoRAConfigError(str(e)) from None


def inject_lora(model: nnx.Module, rank: int, alpha: float, *,
                target_modules: str = DEFAULT_TARGETS, dropout: float = 0.0,
                rslora: bool = False, rngs: nnx.Rngs) -> nnx.Module:
    """Wrap every linear module matching `target_modules` in a fresh LoRADense (in place)."""
    if not isinstance(rank, int) or rank <= 0:
        raise LoRAConfigError(f"peft.rank={rank!r}: expected a positive integer")
    if not alpha > 0:
        raise LoRAConfigError(f"peft.alpha={alpha!r}: expected a positive number")
    if not 0.0 <= dropout < 1.0:
        raise LoRAConfigError(f"peft.dropout={dropout!r}: expected a rate in [0, 1)")
    paths = select_modules(model, target_modules, kinds=(model_lib.Dense, quant.QuantDense))
    for path in paths:
        base = get_module(model, path)
        replace_module(model, path, LoRADense(base, rank, alpha, dropout=dropout,
                                              rslora=rslora, rngs=rngs))
    return model


def _map_variables(state: Any, fn: Callable[[tuple[Any, ...], nnx.Variable], Any]) -> Any:
    def one(path, leaf):
        if isinstance(leaf, nnx.Variable):
            return fn(tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path), leaf)
        return leaf

    return jax.tree_util.tree_map_with_path(one, state,
                                            is_leaf=lambda x: isinstance(x, nnx.Variable))


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def with_dropout_rng(state: Any, rng: jax.Array) -> Any:
    """Give every LoRA dropout key in `state` a distinct key derived from `rng` (pure)."""
    def one(path, leaf):
        if not isinstance(leaf, LoRADropoutKey):
            return leaf
        key = jax.random.fold_in(rng, _stable_int(module_path(path)))
        lead = leaf.shape[:-1]
        keys = jax.random.split(key, math.prod(lead)).reshape(lead) if lead else key
        return leaf.replace(jax.random.key_data(keys).astype(jnp.uint32))

    return _map_variables(state, one)


def adapter_state(params: Any) -> nnx.State:
    """Only the adapter parameters (LoRA A/B and prefix k/v/gate) of a state."""
    return nnx.filter_state(params, ADAPTERS)


def _flat(state: Any) -> dict[str, nnx.Variable]:
    return {module_path(p): v for p, v in nnx.to_flat_state(state)}


def _to_numpy(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def base_hash(params: Any) -> str:
    """sha256 over path, dtype, shape and bytes of every non-adapter variable (stable)."""
    digest = hashlib.sha256()
    for name, var in sorted(_flat(params).items()):
        if isinstance(var, LoRADropoutKey) or _is_adapter(name, var):
            continue
        value = _to_numpy(var[...])
        digest.update(f"{name}|{value.dtype}|{value.shape}|".encode())
        digest.update(np.ascontiguousarray(value).tobytes())
    return digest.hexdigest()


def _is_adapter(name: str, var: nnx.Variable) -> bool:
    return isinstance(var, nnx.LoRAParam) or name.rsplit("/", 1)[-1] in PREFIX_NAMES


ARRAYS_FILE, META_FILE = "adapters.npz", "adapter.json"


def save_adapters(path: str, adapter_params: Any, base_path: str, base_hash: str) -> int:
    """Write adapters atomically to directory `path` with the base's path and hash; bytes."""
    arrays = {name: _to_numpy(var[...]) for name, var in _flat(adapter_params).items()
              if _is_adapter(name, var)}
    meta = {"format": 1, "base_path": base_path, "base_hash": base_hash,
            "params": {k: {"shape": list(v.shape), "dtype": str(v.dtype)}
                       for k, v in arrays.items()}}
    if jax.process_index() != 0:
        return 0
    tmp = f"{path}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    with open(os.path.join(tmp, ARRAYS_FILE), "wb") as f:  # bf16 kept as fp32 on disk
        np.savez(f, **{k: v.astype(np.float32) for k, v in arrays.items()})
    with open(os.path.join(tmp, META_FILE), "w") as f:
        json.dump(meta, f, indent=1)
    old = f"{path}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))


def load_adapters(path: str, graphdef: nnx.GraphDef, params: Any,
                  check_base: bool = True) -> Any:
    """`params` with its adapters replaced by those saved at `path`; checks base and shapes."""
    meta_path = os.path.join(path, META_FILE)
    if not os.path.exists(meta_path):
        raise LoRAConfigError(f"{path}: not an adapter checkpoint (no {META_FILE})")
    with open(meta_path) as f:
        meta = json.load(f)
    with np.load(os.path.join(path, ARRAYS_FILE)) as npz:
        saved = {k: npz[k] for k in npz.files}
    flat = {k: v for k, v in _flat(params).items() if _is_adapter(k, v)}
    problems = [f"{k}: missing from the model" for k in sorted(set(saved) - set(flat))]
    problems += [f"{k}: missing from the checkpoint" for k in sorted(set(flat) - set(saved))]
    problems += [f"{k}: checkpoint shape {saved[k].shape} != model shape {tuple(flat[k].shape)}"
                 for k in sorted(set(saved) & set(flat)) if saved[k].shape != flat[k].shape]
    if problems:
        raise LoRAConfigError(f"adapter checkpoint {path} does not fit the model "
                              "(check peft.rank / peft.target_modules / peft.prefix_len): "
                              + "; ".join(problems[:8]))
    if check_base:
        actual = base_hash(params)
        if actual != meta["base_hash"]:
            raise LoRAConfigError(
                f"adapter checkpoint {path} was trained on base {meta['base_path']!r} with "
                f"hash {meta['base_hash'][:16]}..., but the given base hashes to "
                f"{actual[:16]}...")

    def one(p, leaf):
        name = module_path(p)
        if name not in saved:
            return leaf
        old = leaf[...]
        value = jnp.asarray(saved[name], old.dtype)
        sharding = getattr(old, "sharding", None)
        return leaf.replace(jax.device_put(value, sharding) if sharding is not None else value)

    new = _map_variables(params, one)
    nnx.merge(graphdef, new)  # structure check: raises if the state no longer fits
    return new


def merge_params(graphdef: nnx.GraphDef, params: Any, *rest: Any
                 ) -> tuple[nnx.GraphDef, nnx.State]:
    """Fold scale * A @ B into the base kernels: a plain (unquantised) model state."""
    model = nnx.merge(graphdef, params, *rest)
    for path, module in list(linear_modules(model)):
        if not isinstance(module, LoRADense):
            continue
        base = module.base
        if isinstance(base, quant.QuantDense):
            base = base.to_dense()
        kernel = base.kernel[...]
        # A new Variable: the caller's state (which nnx.merge shares) stays untouched.
        base.kernel = nnx.Param((kernel.astype(jnp.float32) + module.delta_kernel()
                                 ).astype(kernel.dtype), **base.kernel.get_metadata())
        replace_module(model, path, base)
    graphdef, state = nnx.split(model)
    return graphdef, state
