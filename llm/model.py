"""Decoder-only Transformer (LLaMA family and GPT-2) as Flax NNX modules.

Dimension key used in names (`logits_BTV`, `q_BTHE`):
  B batch, T sequence (queries), S key / cache length, D model width, H query heads,
  K key/value heads, E head width, F MLP width, V (padded) vocabulary, L layers, P prefix.

Every parameter carries logical axis names in its `axes` metadata ('vocab', 'embed', 'mlp',
'heads', 'kv', 'norm'); scan-stacked layers gain a leading 'layers' axis. `llm/sharding.py`
maps them onto the mesh, so this file knows nothing about devices.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from llm import attention as attn_lib

FAMILIES = ("llama", "gpt2")
ROPE_SCALINGS = ("none", "linear", "llama3")
REMAT_POLICIES = {
    "none": None,
    "full": "full",
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing": jax.checkpoint_policies.nothing_saveable,
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


class ModelConfigError(ValueError):
    """A model setting that is out of range or inconsistent."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The few fields the model needs; built from `config.model` by `from_dict`."""

    family: str = "llama"
    vocab_size: int = 256
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    d_ff: int = 128
    max_seq_len: int = 256
    norm_eps: float = 1e-5
    rope_theta: float = 10_000.0
    rope_scaling: str = "none"
    rope_factor: float = 1.0
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_len: int = 8192
    tie_embeddings: bool = False
    qk_norm: bool = False
    qkv_bias: bool = False
    sliding_window: int = 0
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    resid_dropout: float = 0.0
    scan_layers: bool = True
    remat: str = "none"
    dtype: str = "float32"
    param_dtype: str = "float32"
    attention: str = "xla"
    init_std: float = 0.02
    prefix_len: int = 0

    @property
    def padded_vocab(self) -> int:
        """Vocabulary rounded up to a multiple of 128 (padded logits are masked)."""
        return -(-self.vocab_size // 128) * 128

    @property
    def compute_dtype(self) -> Any:
        return DTYPES[self.dtype]

    @property
    def weight_dtype(self) -> Any:
        return DTYPES[self.param_dtype]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "model") -> ModelConfig:
        """Build and validate from a mapping (e.g. a ConfigDict section); errors name keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        # `scalar_head` (always False) is in configs saved before heads came from tasks.
        unknown = sorted(set(values) - known - {"size", "scalar_head"})
        if unknown:
            raise ModelConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
        cfg = cls(**{k: v for k, v in values.items() if k in known})
        cfg.validate(where)
        return cfg

    def validate(self, where: str = "model") -> None:
        """Raise ModelConfigError naming the first bad field."""
        def bad(key: str, expected: str) -> ModelConfigError:
            return ModelConfigError(
                f"{where}.{key}={getattr(self, key)!r}: expected {expected}")

        if self.family not in FAMILIES:
            raise bad("family", f"one of {FAMILIES}")
        for key in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                    "d_ff", "max_seq_len"):
            if not isinstance(getattr(self, key), int) or getattr(self, key) <= 0:
                raise bad(key, "a positive integer")
        if self.n_heads % self.n_kv_heads:
            raise bad("n_kv_heads", f"a divisor of n_heads={self.n_heads}")
        if self.head_dim % 2:
            raise bad("head_dim", "an even number (RoPE rotates pairs)")
        if self.rope_scaling not in ROPE_SCALINGS:
            raise bad("rope_scaling", f"one of {ROPE_SCALINGS}")
        if self.remat not in REMAT_POLICIES:
            raise bad("remat", f"one of {sorted(REMAT_POLICIES)}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in DTYPES:
                raise bad(key, f"one of {sorted(DTYPES)}")
        if self.attention not in attn_lib.IMPLEMENTATIONS:
            raise bad("attention", f"one of {attn_lib.IMPLEMENTATIONS}")
        for key in ("embed_dropout", "attn_dropout", "resid_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise bad(key, "a rate in [0, 1)")
        if self.prefix_len < 0 or self.sliding_window < 0:
            raise bad("prefix_len" if self.prefix_len < 0 else "sliding_window", ">= 0")


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
           cfg: ModelConfig, std: float | None = None, value: float | None = None) -> nnx.Param:
    if value is not None:
        init = jnp.full(shape, value, cfg.weight_dtype)
    else:
        init = (std if std is not None else cfg.init_std) * jax.random.normal(
            rngs.params(), shape, cfg.weight_dtype)
    return nnx.Param(init, axes=axes)


class Dense(nnx.Module):
    """x @ kernel_IO (+ bias_O), computed in the model's compute dtype."""

    def __init__(self, d_in: int, d_out: int, axes: tuple[str | None, str | None],
                 cfg: ModelConfig, rngs: nnx.Rngs, use_bias: bool = False,
                 std: float | None = None):
        self.kernel = _param(rngs, (d_in, d_out), axes, cfg, std)
        self.bias = _param(rngs, (d_out,), axes[1:], cfg, value=0.0) if use_bias else None
        self.dtype = cfg.compute_dtype

    def __call__(self, x: jax.Array) -> jax.Array:
        # A 2-D matmul over flattened rows: its weight gradient is then one plain GEMM
        # (XLA:CPU runs a dot that contracts batch and sequence together much slower).
        kernel = self.kernel[...].astype(self.dtype)
        y = jnp.dot(x.astype(self.dtype).reshape(-1, x.shape[-1]), kernel)
        y = y.reshape(*x.shape[:-1], kernel.shape[-1])
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


def fused_dense(x: jax.Array, denses: list[Dense]) -> list[jax.Array]:
    """Several Dense layers applied to one input, as one matmul over their concatenated
    kernels when all are plain `Dense` (else, e.g. LoRA or quantised, each on its own).

    For decode: one weight stream instead of several small matmuls per layer. Inside a
    jitted loop the concatenation of loop-invariant weights is hoisted out of the loop.
    """
    if not all(type(d) is Dense for d in denses):
        return [d(x) for d in denses]
    dtype = denses[0].dtype
    kernel = jnp.concatenate([d.kernel[...].astype(dtype) for d in denses], -1)
    y = jnp.dot(x.astype(dtype).reshape(-1, x.shape[-1]), kernel)
    y = y.reshape(*x.shape[:-1], kernel.shape[-1])
    if any(d.bias is not None for d in denses):
        y = y + jnp.concatenate([
            d.bias[...].astype(dtype) if d.bias is not None else
            jnp.zeros(d.kernel.shape[-1], dtype) for d in denses])
    splits = list(itertools.accumulate(d.kernel.shape[-1] for d in denses))[:-1]
    return jnp.split(y, splits, axis=-1)


def _is_decode_step(x_BTD: jax.Array, cache: Any) -> bool:
    """One new token per row against a cache: the matmuls that `fused_dense` speeds up.
    (Prefill would pay the weight concatenation once per call for little gain.)"""
    return cache is not None and x_BTD.shape[1] == 1


class Norm(nnx.Module):
    """RMSNorm (LLaMA) or LayerNorm with bias (GPT-2), computed in float32."""

    def __init__(self, dim: int, cfg: ModelConfig, rngs: nnx.Rngs, kind: str | None = None):
        self.kind = kind or ("layer" if cfg.family == "gpt2" else "rms")
        self.eps = cfg.norm_eps
        self.scale = _param(rngs, (dim,), ("norm",), cfg, value=1.0)
        self.bias = _param(rngs, (dim,), ("norm",), cfg, value=0.0) if self.kind == "layer" \
            else None

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        if self.kind == "layer":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


def rope_inverse_frequencies(cfg: ModelConfig) -> jax.Array:
    """Per-pair inverse frequencies with linear or llama3 scaling applied."""
    exponents = jnp.arange(0, cfg.head_dim, 2, dtype=jnp.float32) / cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    if cfg.rope_scaling == "linear":
        inv_freq = inv_freq / cfg.rope_factor
    elif cfg.rope_scaling == "llama3":
        low_wavelen = cfg.rope_original_max_len / cfg.rope_low_freq_factor
        high_wavelen = cfg.rope_original_max_len / cfg.rope_high_freq_factor
        wavelen = 2 * math.pi / inv_freq
        scaled = jnp.where(wavelen > low_wavelen, inv_freq / cfg.rope_factor, inv_freq)
        smooth = (cfg.rope_original_max_len / wavelen - cfg.rope_low_freq_factor) / (
            cfg.rope_high_freq_factor - cfg.rope_low_freq_factor)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        inv_freq = jnp.where(medium, smoothed, scaled)
    return inv_freq


def apply_rope(x_BTNE: jax.Array, positions_BT: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """Rotate halves (the Hugging Face LLaMA convention) by position-dependent angles."""
    angles_BTe = positions_BT[..., None].astype(jnp.float32) * inv_freq
    cos, sin = jnp.cos(angles_BTe)[:, :, None], jnp.sin(angles_BTe)[:, :, None]
    x1, x2 = jnp.split(x_BTNE.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_BTNE.dtype)


class Attention(nnx.Module):
    """Grouped-query self-attention with RoPE, optional qk-norm, biases and gated prefix."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, H, K, E = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        bias = cfg.qkv_bias or cfg.family == "gpt2"
        self.q_proj = Dense(D, H * E, ("embed", "heads"), cfg, rngs, use_bias=bias)
        self.k_proj = Dense(D, K * E, ("embed", "kv"), cfg, rngs, use_bias=bias)
        self.v_proj = Dense(D, K * E, ("embed", "kv"), cfg, rngs, use_bias=bias)
        self.o_proj = Dense(H * E, D, ("heads", "embed"), cfg, rngs,
                            use_bias=cfg.family == "gpt2")
        self.q_norm = Norm(E, cfg, rngs, kind="rms") if cfg.qk_norm else None
        self.k_norm = Norm(E, cfg, rngs, kind="rms") if cfg.qk_norm else None
        if cfg.prefix_len:
            P = cfg.prefix_len
            self.prefix_k = _param(rngs, (P, K * E), ("prefix", "kv"), cfg)
            self.prefix_v = _param(rngs, (P, K * E), ("prefix", "kv"), cfg)
            self.prefix_gate = _param(rngs, (H,), ("heads",), cfg, value=0.0)
        self.cfg = cfg

    def __call__(self, x_BTD: jax.Array, positions_BT: jax.Array,
                 segments_BT: jax.Array | None, cache: dict | None,
                 dropout_rng: jax.Array | None, kv_window: int | None = None
                 ) -> tuple[jax.Array, dict | None]:
        cfg = self.cfg
        B, T, _ = x_BTD.shape
        H, K, E = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        projections = (self.q_proj, self.k_proj, self.v_proj)
        if _is_decode_step(x_BTD, cache):  # one matmul; no gradient pays for the concat
            q_BTX, k_BTX, v_BTX = fused_dense(x_BTD, list(projections))
        else:
            q_BTX, k_BTX, v_BTX = (proj(x_BTD) for proj in projections)
        q_BTHE = q_BTX.reshape(B, T, H, E)
        k_BTKE = k_BTX.reshape(B, T, K, E)
        v_BTKE = v_BTX.reshape(B, T, K, E)
        if self.q_norm is not None:
            q_BTHE, k_BTKE = self.q_norm(q_BTHE), self.k_norm(k_BTKE)
        if cfg.family == "llama":
            inv_freq = rope_inverse_frequencies(cfg)
            q_BTHE = apply_rope(q_BTHE, positions_BT, inv_freq)
            k_BTKE = apply_rope(k_BTKE, positions_BT, inv_freq)

        if cache is not None:
            k_BKES, v_BKSE = attn_lib.update_cache(cache["k"], cache["v"], k_BTKE, v_BTKE,
                                                   positions_BT)
            cache = {"k": k_BKES, "v": v_BKSE}
            if kv_window is not None and not 0 < kv_window <= v_BKSE.shape[2]:
                raise ValueError(f"kv_window={kv_window}: expected 1..{v_BKSE.shape[2]} "
                                 "(the cache length)")
            S = kv_window or v_BKSE.shape[2]  # slots >= kv_window are never attended
            kv_positions_BS = jnp.broadcast_to(jnp.arange(S)[None], (B, S))
            mask_BTS = attn_lib.visibility_mask(positions_BT, kv_positions_BS, None, None,
                                                cfg.sliding_window or None)
            out_BTHE = attn_lib.cached_attention(q_BTHE, k_BKES[..., :S], v_BKSE[:, :, :S],
                                                 mask_BTS)
        elif cfg.attention == "cudnn":
            out_BTHE = attn_lib.cudnn_attention(q_BTHE, k_BTKE, v_BTKE,
                                                segments_given=segments_BT is not None)
        elif cfg.attention == "splash":
            out_BTHE = attn_lib.splash_attention(q_BTHE, k_BTKE, v_BTKE, segments_BT)
        else:
            mask_BTS = attn_lib.visibility_mask(positions_BT, positions_BT, segments_BT,
                                                segments_BT, cfg.sliding_window or None)
            # causal by index too, as the cuDNN and splash kernels are
            out_BTHE = attn_lib.xla_attention(
                q_BTHE, k_BTKE, v_BTKE, mask_BTS, dropout_rate=cfg.attn_dropout,
                dropout_rng=dropout_rng, causal=True)

        if cfg.prefix_len:
            out_BTHE = out_BTHE + self._prefix_attention(q_BTHE)
        return self.o_proj(out_BTHE.reshape(B, T, H * E)), cache

    def _prefix_attention(self, q_BTHE: jax.Array) -> jax.Array:
        """LLaMA-Adapter style: a separate softmax over learned prefixes, gated by tanh(g)."""
        cfg = self.cfg
        B, T, H, E = q_BTHE.shape
        P, K = cfg.prefix_len, cfg.n_kv_heads
        k_BPKE = jnp.broadcast_to(self.prefix_k[...].reshape(1, P, K, E), (B, P, K, E))
        v_BPKE = jnp.broadcast_to(self.prefix_v[...].reshape(1, P, K, E), (B, P, K, E))
        mask_BTP = jnp.ones((B, T, P), bool)
        out_BTHE = attn_lib.xla_attention(q_BTHE, k_BPKE.astype(q_BTHE.dtype),
                                             v_BPKE.astype(q_BTHE.dtype), mask_BTP)
        gate_H = jnp.tanh(self.prefix_gate[...]).astype(out_BTHE.dtype)
        return out_BTHE * gate_H[:, None]


class MLP(nnx.Module):
    """SwiGLU (LLaMA) or GELU (GPT-2) feed-forward block."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        D, F = cfg.d_model, cfg.d_ff
        self.gated = cfg.family == "llama"
        bias = cfg.family == "gpt2"
        if self.gated:
            self.gate_proj = Dense(D, F, ("embed", "mlp"), cfg, rngs)
        self.up_proj = Dense(D, F, ("embed", "mlp"), cfg, rngs, use_bias=bias)
        self.down_proj = Dense(F, D, ("mlp", "embed"), cfg, rngs, use_bias=bias)

    def __call__(self, x_BTD: jax.Array, fuse: bool = False) -> jax.Array:
        """`fuse` (decode) runs gate and up as one matmul; see `fused_dense`."""
        if self.gated and fuse:
            gate_BTF, up_BTF = fused_dense(x_BTD, [self.gate_proj, self.up_proj])
            h_BTF = jax.nn.silu(gate_BTF) * up_BTF
        elif self.gated:
            h_BTF = jax.nn.silu(self.gate_proj(x_BTD)) * self.up_proj(x_BTD)
        else:
            h_BTF = jax.nn.gelu(self.up_proj(x_BTD), approximate=True)
        return self.down_proj(h_BTF)


def _dropout(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    if rate == 0.0 or rng is None:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class Block(nnx.Module):
    """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        self.attn_norm = Norm(cfg.d_model, cfg, rngs)
        self.attn = Attention(cfg, rngs)
        self.mlp_norm = Norm(cfg.d_model, cfg, rngs)
        self.mlp = MLP(cfg, rngs)
        self.resid_dropout = cfg.resid_dropout

    def __call__(self, x_BTD, positions_BT, segments_BT, cache, dropout_rng, kv_window=None):
        rngs = [None] * 3 if dropout_rng is None else list(jax.random.split(dropout_rng, 3))
        h_BTD, cache = self.attn(self.attn_norm(x_BTD), positions_BT, segments_BT, cache,
                                 rngs[0], kv_window)
        x_BTD = x_BTD + _dropout(h_BTD, self.resid_dropout, rngs[1])
        mlp_BTD = self.mlp(self.mlp_norm(x_BTD), fuse=_is_decode_step(x_BTD, cache))
        x_BTD = x_BTD + _dropout(mlp_BTD, self.resid_dropout, rngs[2])
        return x_BTD, cache


def _layer_keys(rngs: nnx.Rngs, n_layers: int) -> jax.Array:
    base = rngs.params()
    return jax.vmap(lambda i: jax.random.fold_in(base, i))(jnp.arange(n_layers))


class Transformer(nnx.Module):
    """Token ids → logits (and, with a cache, the updated cache)."""

    def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
        cfg.validate()
        self.cfg = cfg
        V, D = cfg.padded_vocab, cfg.d_model
        self.embed = _param(rngs, (V, D), ("vocab", "embed"), cfg)
        if cfg.family == "gpt2":
            self.pos_embed = _param(rngs, (cfg.max_seq_len, D), (None, "embed"), cfg,
                                    std=0.01)
        keys_L = _layer_keys(rngs, cfg.n_layers)
        if cfg.scan_layers:
            self.layers = nnx.vmap(lambda k: Block(cfg, nnx.Rngs(params=k)))(keys_L)
        else:
            self.layers = nnx.List([Block(cfg, nnx.Rngs(params=k)) for k in keys_L])
        self.final_norm = Norm(D, cfg, rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Dense(D, V, ("embed", "vocab"), cfg, rngs)

    def __call__(self, tokens_BT: jax.Array, positions_BT: jax.Array | None = None,
                 segment_ids_BT: jax.Array | None = None, cache: dict | None = None,
                 dropout_rng: jax.Array | None = None, kv_window: int | None = None
                 ) -> tuple[jax.Array, dict | None]:
        """Return (logits_BTV in float32 with padded entries masked, updated cache).

        `kv_window` (static; cached passes only): attend to the first kv_window cache slots
        only, which the caller guarantees hold every position its queries may see. Decode
        loops use it to read only the filled part of a long cache.
        """
        h_BTD, cache = self.hidden(tokens_BT, positions_BT, segment_ids_BT, cache, dropout_rng,
                                   kv_window)
        return self.logits(h_BTD), cache

    def hidden(self, tokens_BT, positions_BT=None, segment_ids_BT=None, cache=None,
               dropout_rng=None, kv_window=None) -> tuple[jax.Array, dict | None]:
        """Final-normed hidden states h_BTD (for heads and chunked losses) and the cache."""
        cfg = self.cfg
        B, T = tokens_BT.shape
        if kv_window is not None and cache is None:
            raise ValueError("kv_window limits attention over a KV cache; pass cache= too")
        if positions_BT is None:
            positions_BT = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None], (B, T))
        x_BTD = jnp.take(self.embed[...], tokens_BT, axis=0).astype(cfg.compute_dtype)
        if cfg.family == "gpt2":
            x_BTD = x_BTD + jnp.take(self.pos_embed[...], positions_BT, axis=0,
                                     mode="clip").astype(cfg.compute_dtype)
        if dropout_rng is not None:
            embed_rng, dropout_rng = jax.random.split(dropout_rng)
            x_BTD = _dropout(x_BTD, cfg.embed_dropout, embed_rng)
        layer_rngs = None if dropout_rng is None else jax.random.split(dropout_rng,
                                                                       cfg.n_layers)
        x_BTD, cache = self._run_layers(x_BTD, positions_BT, segment_ids_BT, cache, layer_rngs,
                                        kv_window)
        return self.final_norm(x_BTD), cache

    def _run_layers(self, x_BTD, positions_BT, segments_BT, cache, layer_rngs,
                    kv_window=None):
        cfg = self.cfg
        policy = REMAT_POLICIES[cfg.remat]

        def apply_block(block, x, rng):
            return block(x, positions_BT, segments_BT, None, rng)[0]

        if policy is not None:
            kwargs = {} if policy == "full" else {"policy": policy}
            apply_block = nnx.remat(apply_block, **kwargs)

        if cache is not None:
            # Cached passes (prefill, decode) unroll the layers even when they are stored
            # stacked: under scan, XLA copies every layer's weights and cache out of the
            # stacked arrays on each decode step, which costs more than the step's matmuls.
            new_cache = []
            for i, block in enumerate(self._blocks()):
                x_BTD, layer_cache = block(x_BTD, positions_BT, segments_BT, cache[i], None,
                                           kv_window)
                new_cache.append(layer_cache)
            return x_BTD, new_cache

        if not cfg.scan_layers:
            for i, block in enumerate(self.layers):
                rng = None if layer_rngs is None else layer_rngs[i]
                x_BTD = apply_block(block, x_BTD, rng)
            return x_BTD, None

        graphdef, stacked = nnx.split(self.layers)

        def body(x, xs):
            layer_state, rng = xs
            return apply_block(nnx.merge(graphdef, layer_state), x, rng), None

        x_BTD, _ = jax.lax.scan(body, x_BTD, (stacked, layer_rngs))
        return x_BTD, None

    def _blocks(self) -> list[Block]:
        """The layers as separate blocks (static slices of the stacked weights under scan)."""
        if not self.cfg.scan_layers:
            return list(self.layers)
        graphdef, stacked = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda x, i=i: x[i], stacked))
                for i in range(self.cfg.n_layers)]

    def unstack_layers(self) -> None:
        """Hold the layers as separate blocks from now on (in place; same forward code).

        Inside a jitted decode loop this slices the stacked weights once, before the loop,
        instead of on every step; the slices cost one extra copy of the layer weights.
        """
        if self.cfg.scan_layers:
            self.layers = nnx.List(self._blocks())
            self.cfg = dataclasses.replace(self.cfg, scan_layers=False)

    def logits(self, h_BTD: jax.Array) -> jax.Array:
        """LM head (tied or untied) in float32, padded vocabulary entries masked out."""
        cfg = self.cfg
        if cfg.tie_embeddings:
            w_DV = self.embed[...].T
        else:
            w_DV = self.lm_head.kernel[...]
        h_ND = h_BTD.astype(cfg.compute_dtype).reshape(-1, h_BTD.shape[-1])
        logits_BTV = jnp.dot(h_ND, w_DV.astype(cfg.compute_dtype),
                             preferred_element_type=jnp.float32)
        logits_BTV = logits_BTV.reshape(*h_BTD.shape[:-1], w_DV.shape[-1])
        if cfg.padded_vocab != cfg.vocab_size:
            valid_V = jnp.arange(cfg.padded_vocab) < cfg.vocab_size
            logits_BTV = jnp.where(valid_V, logits_BTV, jnp.finfo(jnp.float32).min)
        return logits_BTV


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: Any = None) -> list[dict]:
    """Zeroed KV cache, one dict per layer (scan or not): keys transposed, 'k' [B, K, E, S],
    and 'v' [B, K, S, E] (the layouts `attention.cached_attention` reads directly)."""
    dtype = dtype or cfg.compute_dtype
    B, K, E, S = batch, cfg.n_kv_heads, cfg.head_dim, max_len
    return [{"k": jnp.zeros((B, K, E, S), dtype), "v": jnp.zeros((B, K, S, E), dtype)}
            for _ in range(cfg.n_layers)]


def count_params(cfg: ModelConfig, include_embeddings: bool = True) -> int:
    """Parameter count from shapes alone (no allocation)."""
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    total = 0
    for path, leaf in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
        if not include_embeddings and path[0] in ("embed", "pos_embed"):
            continue
        total += math.prod(leaf.shape)
    return total
