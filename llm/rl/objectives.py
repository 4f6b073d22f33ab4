"""The clipped policy-gradient surrogate and its importance weights (pure, jittable).

Shapes: R completion rows, N completion tokens (a row's i-th new token in column i).
`mask_RN` is 1 on tokens that count. The ratio is pi_theta / pi_old per token, or GSPO's
per-sequence geometric mean of it (`importance_sampling_level='sequence'`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

LEVELS = ("token", "sequence")
IS_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")


def log_importance_weights(logp_RN: jax.Array, old_logp_RN: jax.Array, mask_RN: jax.Array,
                           level: str = "token") -> jax.Array:
    """log(pi_theta / pi_old): per token [R, N], or the masked per-sequence mean [R, 1]."""
    log_ratio_RN = logp_RN - old_logp_RN
    if level == "token":
        return log_ratio_RN
    if level == "sequence":
        tokens_R1 = jnp.maximum(mask_RN.sum(-1, keepdims=True), 1.0)
        return (log_ratio_RN * mask_RN).sum(-1, keepdims=True) / tokens_R1
    raise ValueError(f"importance_sampling_level={level!r}: expected one of {LEVELS}")


def clipped_surrogate(log_weights: jax.Array, advantages_R: jax.Array, epsilon_low: float,
                      epsilon_high: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(per-token loss, clipped-low flags, clipped-high flags), PPO's pessimistic bound:

        loss = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A)

    A flag is 1 where the clipped branch is the one taken (ratio below 1 - eps_low with
    A < 0, above 1 + eps_high with A > 0). `log_weights` is [R, N] or [R, 1].
    """
    ratio = jnp.exp(log_weights)
    clipped = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    # Per-row advantages [R] (GRPO) broadcast over tokens; PPO's are per token [R, N].
    adv_R1 = advantages_R[:, None] if advantages_R.ndim == 1 else advantages_R
    loss = -jnp.minimum(ratio * adv_R1, clipped * adv_R1)
    low = ((ratio < 1.0 - epsilon_low) & (adv_R1 < 0)).astype(jnp.float32)
    high = ((ratio > 1.0 + epsilon_high) & (adv_R1 > 0)).astype(jnp.float32)
    return loss, low, high


def sampling_correction(old_logp_RN: jax.Array, sampling_logp_RN: jax.Array,
                        mask_RN: jax.Array, mode: str, clip_max: float) -> jax.Array:
    """Truncated importance sampling for a sampler/trainer mismatch (top-k / top-p draws):
    pi_old / pi_sampler per token or per sequence, capped at `clip_max` (truncate) or
    zeroed above it (mask). Returns [R, N] or [R, 1], no gradient."""
    if mode not in IS_MODES:
        raise ValueError(f"importance_sampling_mode={mode!r}: expected one of {IS_MODES}")
    diff_RN = (old_logp_RN - sampling_logp_RN) * mask_RN
    diff = diff_RN.sum(-1, keepdims=True) if mode.startswith("sequence") else diff_RN
    ratio = jnp.exp(diff)
    if mode.endswith("truncate"):
        ratio = jnp.minimum(ratio, clip_max)
    else:
        ratio = jnp.where(ratio > clip_max, 0.0, ratio)
    return jax.lax.stop_gradient(ratio)
