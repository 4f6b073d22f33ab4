"""Group-relative advantages (GRPO): each completion's reward against its prompt's group.

Rows come in groups of G consecutive completions of one prompt. The advantage is the reward
minus the group mean, divided by the group's standard deviation (`scale_rewards='group'`),
the whole batch's (`'batch'`) or nothing (`'none'`, Dr. GRPO). Standard deviations are
Bessel-corrected and get 1e-4 added, as TRL computes them. A group whose rewards are all
equal teaches nothing: `zero_std_R` marks its rows.
"""

from __future__ import annotations

import numpy as np

SCALES = ("group", "batch", "none")
STD_EPS = 1e-4


def group_advantages(rewards_R: np.ndarray, group_size: int, scale_rewards: str = "group"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(advantages_R, zero_std_R) of rewards in consecutive groups of `group_size`."""
    if scale_rewards not in SCALES:
        raise ValueError(f"scale_rewards={scale_rewards!r}: expected one of {SCALES}")
    rewards_GN = np.asarray(rewards_R, np.float64).reshape(-1, group_size)
    mean_GN = rewards_GN.mean(axis=1, keepdims=True)
    group_std_GN = np.broadcast_to(_std(rewards_GN, axis=1, keepdims=True), rewards_GN.shape)
    advantages_GN = rewards_GN - mean_GN
    if scale_rewards == "group":
        advantages_GN = advantages_GN / (group_std_GN + STD_EPS)
    elif scale_rewards == "batch":
        advantages_GN = advantages_GN / (_std(rewards_GN, axis=None) + STD_EPS)
    zero_std_R = np.isclose(group_std_GN, 0.0).reshape(-1)
    return advantages_GN.reshape(-1).astype(np.float32), zero_std_R


def _std(x: np.ndarray, axis, keepdims: bool = False) -> np.ndarray:
    """Bessel-corrected standard deviation (0 for a single value)."""
    n = x.size if axis is None else x.shape[axis]
    return np.std(x, axis=axis, keepdims=keepdims, ddof=1) if n > 1 else np.zeros_like(
        np.mean(x, axis=axis, keepdims=keepdims))
