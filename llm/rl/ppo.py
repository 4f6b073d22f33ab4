"""PPO's pieces (pure): per-token rewards, GAE, advantage whitening, the clipped value loss,
the adaptive KL controller (Ziegler et al. 2019) and the missing-EOS penalty.

Shapes: R completion rows, N completion slots (row r's i-th new token in column i);
`mask_RN` is 1 on each row's real tokens. Value slot i is the value of the state that
emits token i; the state after a row's last token is terminal (value 0), as in TRL.
The policy's clipped loss is `objectives.clipped_surrogate` on per-token advantages.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

WHITEN_EPS = 1e-8


def token_rewards(scores_R: np.ndarray, kl_RN: np.ndarray, mask_RN: np.ndarray, beta: float
                  ) -> np.ndarray:
    """rewards_RN: -beta * KL on every real token, plus each row's score on its last one."""
    rewards_RN = -beta * np.asarray(kl_RN, np.float64) * mask_RN
    lengths_R = np.asarray(mask_RN).sum(-1).astype(np.int64)
    rows_R = np.nonzero(lengths_R > 0)[0]
    rewards_RN[rows_R, lengths_R[rows_R] - 1] += np.asarray(scores_R, np.float64)[rows_R]
    return rewards_RN


def gae(rewards_RN: np.ndarray, values_RN: np.ndarray, mask_RN: np.ndarray, gamma: float,
        lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(advantages_RN, returns_RN) by generalised advantage estimation over padded rows:

        delta_i = r_i + gamma * V_{i+1} - V_i,    A_i = delta_i + gamma * lam * A_{i+1}

    with V and r zero on padding (so the slot after a row's last token is terminal).
    Returns are A + V; both are zero on padding.
    """
    mask_RN = np.asarray(mask_RN, np.float64)
    values_RN = np.asarray(values_RN, np.float64) * mask_RN
    rewards_RN = np.asarray(rewards_RN, np.float64) * mask_RN
    R, N = values_RN.shape
    advantages_RN = np.zeros((R, N))
    next_value_R, next_adv_R = np.zeros(R), np.zeros(R)
    for i in reversed(range(N)):
        delta_R = rewards_RN[:, i] + gamma * next_value_R - values_RN[:, i]
        next_adv_R = (delta_R + gamma * lam * next_adv_R) * mask_RN[:, i]
        advantages_RN[:, i] = next_adv_R
        next_value_R = values_RN[:, i]
    return advantages_RN, (advantages_RN + values_RN) * mask_RN


def whiten(x_RN: np.ndarray, mask_RN: np.ndarray, shift_mean: bool = True) -> np.ndarray:
    """x normalised by its masked mean and (Bessel-corrected) masked variance, 0 on padding."""
    mask_RN = np.asarray(mask_RN, np.float64)
    n = mask_RN.sum()
    mean = (x_RN * mask_RN).sum() / max(n, 1.0)
    var = (np.square(x_RN - mean) * mask_RN).sum() / max(n, 1.0)
    if n > 1:
        var *= n / (n - 1)
    out_RN = (x_RN - mean) / np.sqrt(var + WHITEN_EPS)
    if not shift_mean:
        out_RN = out_RN + mean
    return out_RN * mask_RN


def clipped_value_loss(values_RN, old_values_RN, returns_RN, cliprange_value: float):
    """(per-token loss, clipped flags): 0.5 * max((V - G)^2, (clip(V, V_old +- c) - G)^2);
    a flag is 1 where the clipped branch is the larger (the one taken)."""
    clipped_RN = old_values_RN + jnp.clip(values_RN - old_values_RN, -cliprange_value,
                                          cliprange_value)
    loss1_RN = jnp.square(values_RN - returns_RN)
    loss2_RN = jnp.square(clipped_RN - returns_RN)
    return 0.5 * jnp.maximum(loss1_RN, loss2_RN), (loss2_RN > loss1_RN).astype(jnp.float32)


def explained_variance(values_RN: np.ndarray, returns_RN: np.ndarray, mask_RN: np.ndarray
                       ) -> float:
    """1 - Var(G - V) / Var(G) over real tokens (1: values predict returns exactly)."""
    m = np.asarray(mask_RN, bool)
    returns, values = np.asarray(returns_RN)[m], np.asarray(values_RN)[m]
    var = float(np.var(returns)) if returns.size else 0.0
    return float("nan") if var == 0 else 1.0 - float(np.var(returns - values)) / var


def missing_eos_scores(scores_R: np.ndarray, truncated_R: np.ndarray, penalty: float
                       ) -> np.ndarray:
    """Scores with `penalty` subtracted where a completion was cut off without EOS (TRL)."""
    return np.asarray(scores_R, np.float64) - penalty * np.asarray(truncated_R, np.float64)


@dataclasses.dataclass
class KLController:
    """The KL coefficient beta: fixed (target_kl <= 0), or adapted toward `target_kl`:

        e = clip(KL / target_kl - 1, -0.2, 0.2),    beta <- beta * (1 + e * n / horizon)

    after each rollout batch of n completions whose mean per-sequence KL is KL.
    """

    beta: float
    target_kl: float = 0.0
    horizon: float = 10000.0

    @property
    def adaptive(self) -> bool:
        """Whether beta moves (a positive target_kl)."""
        return self.target_kl > 0

    def update(self, kl: float, n: int) -> float:
        """Move beta after a rollout batch; returns the new beta."""
        if self.adaptive:
            error = float(np.clip(kl / self.target_kl - 1.0, -0.2, 0.2))
            self.beta *= 1.0 + error * n / self.horizon
        return self.beta
