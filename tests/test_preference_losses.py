"""Each preference loss against a value computed by hand (math module, no JAX) on a fixed
small batch of log-probs."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest

from llm import losses

# Two pairs: policy / reference log-prob sums and completion-token counts.
POLICY_C, POLICY_R = [-4.0, -6.5], [-5.0, -6.0]
REF_C, REF_R = [-4.5, -6.0], [-4.8, -6.2]
N_C, N_R = [4.0, 5.0], [2.0, 3.0]
BETA, EPS = 0.5, 0.2


def sig(x):
    return 1 / (1 + math.exp(-x))


def log_sig(x):
    return math.log(sig(x))


def deltas():
    return [(pc - rc) - (pr - rr)
            for pc, rc, pr, rr in zip(POLICY_C, REF_C, POLICY_R, REF_R, strict=True)]


def check(got, expected):
    np.testing.assert_allclose(np.asarray(got), np.asarray(expected), rtol=1e-6, atol=1e-6)


def test_sigmoid_and_conservative_dpo():
    d = jnp.asarray(deltas())
    check(losses.dpo_sigmoid(d, BETA), [-log_sig(BETA * x) for x in deltas()])
    check(losses.dpo_sigmoid(d, BETA, EPS),
          [-(1 - EPS) * log_sig(BETA * x) - EPS * log_sig(-BETA * x) for x in deltas()])


def test_sigmoid_at_zero_margin_is_log_two():
    check(losses.dpo_sigmoid(jnp.zeros(3), BETA), [math.log(2)] * 3)


def test_hinge_and_robust():
    d = jnp.asarray(deltas())
    check(losses.dpo_hinge(d, BETA), [max(0.0, 1 - BETA * x) for x in deltas()])
    check(losses.dpo_robust(d, BETA, EPS),
          [(-(1 - EPS) * log_sig(BETA * x) + EPS * log_sig(-BETA * x)) / (1 - 2 * EPS)
           for x in deltas()])


def test_ipo_is_length_normalised():
    avg = [(pc - rc) / nc - (pr - rr) / nr
           for pc, rc, pr, rr, nc, nr in zip(POLICY_C, REF_C, POLICY_R, REF_R, N_C, N_R,
                                             strict=True)]
    check(losses.dpo_ipo(jnp.asarray(avg), BETA), [(a - 1 / (2 * BETA)) ** 2 for a in avg])


def test_simpo():
    gamma = 0.3
    avg = [pc / nc - pr / nr for pc, pr, nc, nr in zip(POLICY_C, POLICY_R, N_C, N_R, strict=True)]
    check(losses.simpo(jnp.asarray(avg), BETA, gamma),
          [-log_sig(BETA * a - gamma) for a in avg])


def test_orpo_odds_ratio():
    avg_c = [pc / nc for pc, nc in zip(POLICY_C, N_C, strict=True)]
    avg_r = [pr / nr for pr, nr in zip(POLICY_R, N_R, strict=True)]

    def log_odds(p):
        return p - math.log(1 - math.exp(p))

    expected = [-BETA * log_sig(log_odds(c) - log_odds(r))
                for c, r in zip(avg_c, avg_r, strict=True)]
    check(losses.orpo_odds_ratio(jnp.asarray(avg_c), jnp.asarray(avg_r), BETA), expected)


@pytest.mark.parametrize("x", [-1e-6, -0.3, -0.693, -0.7, -5.0, -40.0])
def test_log1mexp(x):
    assert float(losses.log1mexp(jnp.float32(x))) == pytest.approx(
        math.log(-math.expm1(x)), rel=1e-4)


def test_bradley_terry_with_margin_and_centring():
    chosen, rejected, margin, coef = [1.5, -0.2], [0.5, 0.4], [0.25, 0.0], 0.01
    check(losses.bradley_terry(jnp.asarray(chosen), jnp.asarray(rejected), jnp.asarray(margin),
                               coef),
          [-log_sig(c - r - m) + coef * (c + r) ** 2
           for c, r, m in zip(chosen, rejected, margin, strict=True)])
    check(losses.bradley_terry(jnp.asarray(chosen), jnp.asarray(rejected)),
          [-log_sig(c - r) for c, r in zip(chosen, rejected, strict=True)])


def test_kto_with_reference_point():
    logratio = [0.4, -0.3, 1.2, -0.8]
    desirable = [1, 0, 1, 0]
    kl_policy, kl_ref = [-3.0, -2.0, -4.0, -1.0], [-3.5, -2.2, -3.9, -1.2]
    z = max(0.0, sum(p - r for p, r in zip(kl_policy, kl_ref, strict=True)) / 4)
    wd, wu = 1.0, 1.5
    kl = losses.kto_reference_point(jnp.asarray(kl_policy), jnp.asarray(kl_ref))
    check(kl, z)
    expected = [wd * (1 - sig(BETA * (r - z))) if d else wu * (1 - sig(BETA * (z - r)))
                for r, d in zip(logratio, desirable, strict=True)]
    check(losses.kto(jnp.asarray(logratio), jnp.asarray(desirable), kl, BETA, wd, wu),
          expected)
    # z is clamped at zero when the policy is below the reference on mismatched pairs
    assert float(losses.kto_reference_point(jnp.asarray([-5.0]), jnp.asarray([-4.0]))) == 0.0


def test_sequence_logps_counts_masked_tokens_only():
    logits = jnp.log(jnp.asarray([[[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]]]))
    targets = jnp.asarray([[0, 1, 2]])
    mask = jnp.asarray([[0.0, 1.0, 1.0]])
    logps, count = losses.sequence_logps(logits, targets, mask)
    check(logps, [math.log(0.8) + math.log(0.6)])
    check(count, [2.0])
