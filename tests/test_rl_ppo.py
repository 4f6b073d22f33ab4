"""PPO's pure pieces (llm/rl/ppo.py) against values worked out by hand: per-token rewards,
GAE over padded rows, whitening, both clipped branches of the policy and value losses, the
adaptive KL controller and the missing-EOS penalty."""

import jax.numpy as jnp
import numpy as np
import pytest

from llm.rl import objectives, ppo

MASK_RN = np.array([[1, 1, 1], [1, 1, 0]], np.float32)  # row 1 ends after 2 tokens


def test_token_rewards_kl_on_every_token_score_on_the_last():
    kl_RN = np.array([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    rewards_RN = ppo.token_rewards(np.array([1.0, 2.0]), kl_RN, MASK_RN, beta=0.5)
    np.testing.assert_allclose(rewards_RN, [[-0.05, -0.1, 0.85], [-0.25, 1.75, 0.0]])


def test_gae_over_padded_rows():
    rewards_RN = np.array([[0.1, -0.2, 1.0], [0.0, 2.0, 99.0]])  # 99, 7: padding, ignored
    values_RN = np.array([[0.5, 0.4, 0.3], [1.0, 0.5, 7.0]])
    adv_RN, ret_RN = ppo.gae(rewards_RN, values_RN, MASK_RN, gamma=0.9, lam=0.8)
    # row 0: deltas (-0.04, -0.33, 0.7); A2 = 0.7, A1 = -0.33 + 0.72 * 0.7, A0 = -0.04 + 0.72 A1
    # row 1: deltas (-0.55, 1.5); A1 = 1.5, A0 = -0.55 + 0.72 * 1.5
    np.testing.assert_allclose(adv_RN, [[0.08528, 0.174, 0.7], [0.53, 1.5, 0.0]], atol=1e-12)
    np.testing.assert_allclose(ret_RN, [[0.58528, 0.574, 1.0], [1.53, 2.0, 0.0]], atol=1e-12)
    # gamma = lam = 1: the advantage is the sum of the rewards still to come minus the value.
    adv_RN, _ = ppo.gae(rewards_RN, values_RN, MASK_RN, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv_RN, [[0.4, 0.4, 0.7], [1.0, 1.5, 0.0]], atol=1e-12)
    # lam = 0: one-step TD errors.
    adv_RN, _ = ppo.gae(rewards_RN, values_RN, MASK_RN, gamma=0.9, lam=0.0)
    np.testing.assert_allclose(adv_RN, [[-0.04, -0.33, 0.7], [-0.55, 1.5, 0.0]], atol=1e-12)


def test_whiten_uses_real_tokens_only():
    x_RN = np.array([[1.0, 2.0], [3.0, 100.0]])
    mask_RN = np.array([[1, 1], [1, 0]], np.float32)
    # mean 2, Bessel-corrected variance 1 over (1, 2, 3); the padded 100 counts nowhere
    np.testing.assert_allclose(ppo.whiten(x_RN, mask_RN), [[-1.0, 0.0], [1.0, 0.0]],
                               atol=1e-7)
    np.testing.assert_allclose(ppo.whiten(x_RN, mask_RN, shift_mean=False),
                               [[1.0, 2.0], [3.0, 0.0]], atol=1e-7)


def test_gae_then_whitening_over_padded_rows():
    rewards_RN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    adv_RN, _ = ppo.gae(rewards_RN, np.zeros((2, 3)), MASK_RN, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv_RN, [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    # over the 5 real tokens (1, 1, 0, 1, 0): mean 0.6, unbiased variance 0.3
    expected = (np.array([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) - 0.6) / np.sqrt(0.3) * MASK_RN
    np.testing.assert_allclose(ppo.whiten(adv_RN, MASK_RN), expected, rtol=1e-6)


def test_clipped_value_loss_both_clipped_branches():
    old_RN = jnp.zeros((1, 4))
    returns_RN = jnp.array([[1.0, 1.0, 1.0, -1.0]])
    # V = 0.5 toward G = 1: clipped to 0.2 (loss 0.5 * 0.8^2, clipped branch taken);
    # V = -0.5 away from G: clipped to -0.2, the unclipped error 1.5^2 is larger;
    # V = 0.1 inside the range: both equal; V = -0.5 toward G = -1: clipped to -0.2.
    values_RN = jnp.array([[0.5, -0.5, 0.1, -0.5]])
    loss_RN, clipped_RN = ppo.clipped_value_loss(values_RN, old_RN, returns_RN, 0.2)
    np.testing.assert_allclose(loss_RN, [[0.32, 1.125, 0.405, 0.32]], rtol=1e-6)
    np.testing.assert_array_equal(clipped_RN, [[1, 0, 0, 1]])


def test_clipped_policy_loss_on_per_token_advantages():
    adv_RN = jnp.array([[1.0, -1.0, 1.0, -1.0]])
    log_w_RN = jnp.log(jnp.array([[1.5, 0.5, 0.5, 1.5]]))
    loss_RN, low_RN, high_RN = objectives.clipped_surrogate(log_w_RN, adv_RN, 0.2, 0.2)
    np.testing.assert_allclose(loss_RN, [[-1.2, 0.8, -0.5, 1.5]], rtol=1e-6)
    np.testing.assert_array_equal(low_RN, [[0, 1, 0, 0]])
    np.testing.assert_array_equal(high_RN, [[1, 0, 0, 0]])


def test_adaptive_kl_controller():
    ctl = ppo.KLController(beta=0.1, target_kl=6.0, horizon=10000)
    # KL 9: error clipped to +0.2, beta * (1 + 0.2 * 256 / 10000)
    assert ctl.update(9.0, 256) == pytest.approx(0.1 * 1.00512)
    # KL 5.7: error -0.05, beta * (1 - 0.05 * 1000 / 10000)
    assert ctl.update(5.7, 1000) == pytest.approx(0.1 * 1.00512 * 0.995)
    # KL 0: error clipped to -0.2
    assert ctl.update(0.0, 500) == pytest.approx(0.1 * 1.00512 * 0.995 * 0.99)
    fixed = ppo.KLController(beta=0.05, target_kl=0.0)
    assert fixed.update(100.0, 10000) == 0.05 and not fixed.adaptive


def test_missing_eos_penalty_and_explained_variance():
    np.testing.assert_allclose(ppo.missing_eos_scores(np.array([1.0, 2.0]),
                                                      np.array([False, True]), 1.5),
                               [1.0, 0.5])
    returns_RN = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 50.0]])
    assert ppo.explained_variance(returns_RN, returns_RN, MASK_RN) == pytest.approx(1.0)
    assert ppo.explained_variance(np.zeros((2, 3)), returns_RN, MASK_RN) == pytest.approx(0.0)
    half_RN = np.array([[1.5, 2.0, 2.5], [4.0, 5.0, 0.0]])  # residuals (-.5, 0, .5, 0, 0)
    # Var(G) over (1..5) = 2, Var(G - V) = 0.1
    assert ppo.explained_variance(half_RN, returns_RN, MASK_RN) == pytest.approx(0.95)
