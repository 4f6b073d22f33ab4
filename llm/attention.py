"""Attention kernels (xla / cudnn / splash) and the KV-cache update.

All kernels take grouped-query inputs q_BTHE, k_BSKE, v_BSKE and return out_BTHE. Masking is
described by positions and segment ids, never by a dense mask passed in: a key is visible to
a query when it sits in the same segment and at an earlier or equal position. With a KV
cache the key slot index *is* the position (the cache is written at `positions`), so the
same rule covers training, prefill and decode, and padded slots beyond a row's length are
never visible to that row's real queries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla", "cudnn", "splash")


class AttentionConfigError(ValueError):
    """An attention implementation that this backend or batch cannot run."""


def check_implementation(name: str, backend: str | None = None) -> None:
    """Raise one clear error when `name` cannot run on `backend` (default: jax's)."""
    backend = backend or jax.default_backend()
    if name not in IMPLEMENTATIONS:
        raise AttentionConfigError(
            f"model.attention={name!r}: expected one of {', '.join(IMPLEMENTATIONS)}"
        )
    if name == "cudnn" and backend != "gpu":
        raise AttentionConfigError(
            f"model.attention='cudnn' needs a GPU backend, but jax runs on {backend!r}; "
            "use model.attention='xla'"
        )
    if name == "splash" and backend not in ("tpu", "cpu"):
        raise AttentionConfigError(
            f"model.attention='splash' needs a TPU (or CPU in Pallas interpret mode), "
            f"but jax runs on {backend!r}; use 'xla' or 'cudnn'"
        )


def visibility_mask(
    q_positions_BT: jax.Array,
    kv_positions_BS: jax.Array,
    q_segments_BT: jax.Array | None,
    kv_segments_BS: jax.Array | None,
    sliding_window: int | None = None,
) -> jax.Array:
    """Boolean mask_BTS: causal by position, and within the same (non-zero) segment."""
    mask_BTS = kv_positions_BS[:, None, :] <= q_positions_BT[:, :, None]
    if sliding_window:
        mask_BTS &= kv_positions_BS[:, None, :] > q_positions_BT[:, :, None] - sliding_window
    if q_segments_BT is not None and kv_segments_BS is not None:
        mask_BTS &= q_segments_BT[:, :, None] == kv_segments_BS[:, None, :]
    return mask_BTS


def xla_attention(
    q_BTHE: jax.Array,
    k_BSKE: jax.Array,
    v_BSKE: jax.Array,
    mask_BTS: jax.Array,
    *,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
) -> jax.Array:
    """Plain einsum attention with grouped queries (softmax in float32): out_BTHE.

    Every query sees at least itself (same position and segment), so no row is fully
    masked and one large negative fill suffices.
    """
    B, T, H, E = q_BTHE.shape
    K = k_BSKE.shape[2]
    q_BTKGE = (q_BTHE * jnp.asarray(E**-0.5, q_BTHE.dtype)).reshape(B, T, K, H // K, E)
    scores_BKGTS = jnp.einsum("btkge,bske->bkgts", q_BTKGE, k_BSKE,
                              preferred_element_type=jnp.float32)
    scores_BKGTS = jnp.where(mask_BTS[:, None, None], scores_BKGTS, -1e30)
    probs_BKGTS = jax.nn.softmax(scores_BKGTS, axis=-1)
    if dropout_rate > 0.0 and dropout_rng is not None:
        keep = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, probs_BKGTS.shape)
        probs_BKGTS = jnp.where(keep, probs_BKGTS / (1.0 - dropout_rate), 0.0)
    out_BTKGE = jnp.einsum("bkgts,bske->btkge", probs_BKGTS.astype(v_BSKE.dtype), v_BSKE)
    return out_BTKGE.reshape(B, T, H, E)


def cudnn_attention(
    q_BTHE: jax.Array,
    k_BSKE: jax.Array,
    v_BSKE: jax.Array,
    *,
    segments_given: bool,
) -> jax.Array:
    """cuDNN flash attention (GPU) for causal, unpacked batches."""
    if segments_given:
        raise AttentionConfigError(
            "model.attention='cudnn' cannot isolate packed documents (segment ids); "
            "use model.attention='xla' for packed batches"
        )
    return jax.nn.dot_product_attention(q_BTHE, k_BSKE, v_BSKE, is_causal=True,
                                        implementation="cudnn")


def splash_attention(
    q_BTHE: jax.Array,
    k_BSKE: jax.Array,
    v_BSKE: jax.Array,
    segments_BT: jax.Array | None,
) -> jax.Array:
    """Pallas splash attention (TPU; interpret mode elsewhere) with causal + segment masks."""
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_kernel as splash,
    )
    from jax.experimental.pallas.ops.tpu.splash_attention import (
        splash_attention_mask as splash_mask,
    )

    B, T, H, E = q_BTHE.shape
    K = k_BSKE.shape[2]
    mask = splash_mask.MultiHeadMask([splash_mask.CausalMask((T, T)) for _ in range(H)])
    interpret = jax.default_backend() != "tpu"
    kernel = splash.make_splash_mha(mask, head_shards=1, q_seq_shards=1, interpret=interpret)
    q_BHTE = jnp.swapaxes(q_BTHE, 1, 2) * (E**-0.5)
    k_BHSE = jnp.repeat(jnp.swapaxes(k_BSKE, 1, 2), H // K, axis=1)
    v_BHSE = jnp.repeat(jnp.swapaxes(v_BSKE, 1, 2), H // K, axis=1)
    if segments_BT is None:
        out_BHTE = jax.vmap(kernel)(q_BHTE, k_BHSE, v_BHSE)
    else:
        segment_ids = splash.SegmentIds(q=segments_BT, kv=segments_BT)
        out_BHTE = jax.vmap(kernel)(q_BHTE, k_BHSE, v_BHSE, segment_ids=segment_ids)
    return jnp.swapaxes(out_BHTE, 1, 2)


def update_cache(
    cache_k_BSKE: jax.Array,
    cache_v_BSKE: jax.Array,
    k_BTKE: jax.Array,
    v_BTKE: jax.Array,
    positions_BT: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Write new keys/values into the cache at their positions (slot index == position)."""
    S = cache_k_BSKE.shape[1]
    # Positions past the cache (padding beyond max length) are dropped, not wrapped.
    slots_BT = jnp.where(positions_BT < S, positions_BT, S)
    rows_B1 = jnp.arange(k_BTKE.shape[0])[:, None]
    cache_k_BSKE = cache_k_BSKE.at[rows_B1, slots_BT].set(k_BTKE.astype(cache_k_BSKE.dtype),
                                                         mode="drop")
    cache_v_BSKE = cache_v_BSKE.at[rows_B1, slots_BT].set(v_BTKE.astype(cache_v_BSKE.dtype),
                                                         mode="drop")
    return cache_k_BSKE, cache_v_BSKE
