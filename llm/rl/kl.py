"""Per-token KL(policy || reference) estimators from sampled tokens (Schulman's k1/k2/k3).

With log r = log pi_ref(x) - log pi(x) for x drawn from pi:
    k1 = -log r                 unbiased, can be negative, high variance
    k2 = (log r)^2 / 2          biased, low variance
    k3 = (r - 1) - log r        unbiased, non-negative (TRL's GRPO and the DeepSeekMath paper)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ESTIMATORS = ("k1", "k2", "k3")


def per_token_kl(logp_RN: jax.Array, ref_logp_RN: jax.Array, estimator: str = "k3"
                 ) -> jax.Array:
    """KL estimate per completion token (unmasked), from policy and reference log-probs."""
    log_r_RN = ref_logp_RN - logp_RN
    if estimator == "k1":
        return -log_r_RN
    if estimator == "k2":
        return 0.5 * jnp.square(log_r_RN)
    if estimator == "k3":
        return jnp.exp(log_r_RN) - 1.0 - log_r_RN
    raise ValueError(f"kl_estimator={estimator!r}: expected one of {ESTIMATORS}")
