"""llm/rl pieces against hand-computed values: group advantages, KL estimators, the clipped
surrogate in both clipped branches, each loss_type's aggregation, sampling correction."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from llm.rl import advantages, kl, objectives
from llm.train.grpo import aggregate

REWARDS = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0]  # group 2 has equal rewards


def test_group_advantages_each_scaling():
    group_std = math.sqrt(4 * 0.25 / 3)  # Bessel-corrected std of (1, 0, 0, 1)
    batch_std = math.sqrt((6 * 0.25**2 + 2 * 0.75**2) / 7)
    signs = np.array([1, -1, -1, 1, 0, 0, 0, 0], float)
    # Group 2's advantages are 0 by construction (rewards - mean), whatever the scaling.
    for scale, expected in (("group", 0.5 / (group_std + 1e-4) * signs),
                            ("batch", 0.5 / (batch_std + 1e-4) * signs),
                            ("none", 0.5 * signs)):
        adv_R, zero_std_R = advantages.group_advantages(np.array(REWARDS), 4, scale)
        np.testing.assert_allclose(adv_R, expected, rtol=1e-6, err_msg=scale)
        np.testing.assert_array_equal(zero_std_R, [False] * 4 + [True] * 4)
    with pytest.raises(ValueError, match="scale_rewards='mean'"):
        advantages.group_advantages(np.array(REWARDS), 4, "mean")


def test_kl_estimators():
    logp, ref = jnp.array([[-1.0]]), jnp.array([[-2.0]])  # log r = ref - logp = -1
    assert float(kl.per_token_kl(logp, ref, "k1")[0, 0]) == pytest.approx(1.0)
    assert float(kl.per_token_kl(logp, ref, "k2")[0, 0]) == pytest.approx(0.5)
    assert float(kl.per_token_kl(logp, ref, "k3")[0, 0]) == pytest.approx(math.exp(-1))
    assert float(kl.per_token_kl(logp, logp, "k3")[0, 0]) == 0.0


def test_clipped_surrogate_both_clipped_branches():
    # rows: (A, ratio) = (+1, 1.5) clipped high; (-1, 0.5) clipped low; (+1, 0.5) and
    # (-1, 1.5) take the unclipped branch (the pessimistic bound).
    adv_R = jnp.array([1.0, -1.0, 1.0, -1.0])
    log_w_R1 = jnp.log(jnp.array([[1.5], [0.5], [0.5], [1.5]]))
    loss, low, high = objectives.clipped_surrogate(log_w_R1, adv_R, 0.2, 0.28)
    np.testing.assert_allclose(loss[:, 0], [-1.28, 0.8, -0.5, 1.5], rtol=1e-6)
    np.testing.assert_array_equal(low[:, 0], [0, 1, 0, 0])
    np.testing.assert_array_equal(high[:, 0], [1, 0, 0, 0])


def test_importance_weights_token_and_sequence():
    logp = jnp.array([[-1.0, -2.0, -9.0]])
    old = jnp.array([[-1.5, -1.0, 0.0]])
    mask = jnp.array([[1.0, 1.0, 0.0]])
    np.testing.assert_allclose(objectives.log_importance_weights(logp, old, mask, "token"),
                               [[0.5, -1.0, -9.0]])
    np.testing.assert_allclose(objectives.log_importance_weights(logp, old, mask, "sequence"),
                               [[-0.25]])  # the masked mean of (0.5, -1.0)


def test_aggregation_of_each_loss_type():
    per_token = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    expected = {"grpo": (1.5 + 4.0) / 2, "bnpo": 7.0 / 3, "dr_grpo": 7.0 / (2 * 3),
                "dapo": 7.0 / 10.0}
    for loss_type, value in expected.items():
        loss_sum, weight = aggregate(per_token, mask, loss_type, 3, jnp.float32(10.0))
        assert float(loss_sum / weight) == pytest.approx(value), loss_type


def test_sampling_correction_truncates_and_masks():
    old = jnp.array([[0.0, 0.0]])
    sampled = jnp.array([[-2.0, -0.5]])  # ratios e^2 and e^0.5
    mask = jnp.ones((1, 2))
    np.testing.assert_allclose(objectives.sampling_correction(old, sampled, mask,
                                                              "token_truncate", 3.0),
                               [[3.0, math.exp(0.5)]], rtol=1e-6)
    np.testing.assert_allclose(objectives.sampling_correction(old, sampled, mask,
                                                              "token_mask", 3.0),
                               [[0.0, math.exp(0.5)]], rtol=1e-6)
    np.testing.assert_allclose(objectives.sampling_correction(old, sampled, mask,
                                                              "sequence_truncate", 20.0),
                               [[math.exp(2.5)]], rtol=1e-6)
    np.testing.assert_allclose(objectives.sampling_correction(old, sampled, mask,
                                                              "sequence_mask", 3.0), [[0.0]])
