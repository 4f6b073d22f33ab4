"""Sampling transforms: empirical frequencies vs the exact filtered distribution; penalties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm.sampling.filters import (
    SamplingParams,
    _first_reaching,
    _largest_key_B,
    _ordered_keys,
    apply_penalties,
    choose_tokens,
    filter_logits,
    row_keys,
    sample_categorical,
)

V = 128
PROBS = np.array([0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.05, 0.03, 0.02, 0.01])
DRAWS = 20_000
TV_BOUND = 0.025  # observed TV for 20k draws on 10 tokens is ~0.01


def exact_distribution(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0) -> np.ndarray:
    """Reference (numpy, written independently): temperature → top-k → top-p → min-p."""
    p = PROBS ** (1.0 / temperature)
    p = p / p.sum()
    order = np.argsort(-p, kind="stable")
    keep = np.zeros(len(p), bool)
    kept = order[:top_k] if top_k else order
    q = p[kept] / p[kept].sum()
    n = 1 + int(np.sum(np.cumsum(q)[:-1] < top_p))  # smallest prefix with mass >= top_p
    keep[kept[:n]] = True
    keep &= p >= min_p * p.max()
    out = np.zeros(V)
    out[:len(p)] = np.where(keep, p, 0.0) / np.where(keep, p, 0.0).sum()
    return out


@jax.jit
def draw(sp: SamplingParams) -> jax.Array:
    logits_BV = jnp.full((DRAWS, V), -1e9).at[:, :len(PROBS)].set(jnp.log(PROBS))
    seen_BV = jnp.zeros((DRAWS, V), bool)
    counts_BV = jnp.zeros((DRAWS, V), jnp.int32)
    keys_B = row_keys(sp.seed, jnp.zeros((DRAWS,), jnp.int32))
    tokens_B, _, _ = choose_tokens(logits_BV, sp, keys_B, seen_BV, counts_BV,
                                   jnp.zeros((DRAWS,), jnp.int32), jnp.full((8,), -1))
    return tokens_B


CASES = [  # (controls, the same controls off by one kept token or with a wrong value)
    (dict(temperature=0.7), dict(temperature=0.85)),
    (dict(top_k=3), dict(top_k=4)),
    (dict(top_p=0.7), dict(top_p=0.76)),  # keeps 4 tokens; the wrong one keeps 5
    (dict(top_p=0.7), dict(top_p=0.6)),  # an inclusive-cumsum bug keeps 3
    (dict(min_p=0.3), dict(min_p=0.25)),
    (dict(temperature=0.7, top_k=6, top_p=0.9, min_p=0.02),  # top-p binds: 5 tokens
     dict(temperature=0.7, top_k=5, top_p=0.9, min_p=0.02)),
]


def tv(p: np.ndarray, q: np.ndarray) -> float:
    return 0.5 * float(np.abs(p - q).sum())


@pytest.mark.parametrize("controls, wrong", CASES)
def test_empirical_frequencies_match_exact_filtered_distribution(controls, wrong):
    sp = SamplingParams.create(DRAWS, **{"top_p": 1.0, "temperature": 1.0, **controls},
                               seed=np.arange(DRAWS))
    freq = np.bincount(np.asarray(draw(sp)), minlength=V) / DRAWS
    want = exact_distribution(**controls)
    assert np.all(freq[want == 0] == 0), "sampled a token the filter removes"
    assert tv(freq, want) < TV_BOUND
    # The bound has teeth: the wrong filter's exact distribution fails it.
    assert tv(freq, exact_distribution(**wrong)) > TV_BOUND


def test_penalties_change_exactly_the_logits_they_should():
    logits_BV = jnp.array([[2.0, -1.0, 3.0, -2.0, 0.5, 1.0]])
    prompt_seen_BV = jnp.array([[True, True, False, False, False, False]])
    counts_BV = jnp.array([[0, 0, 1, 3, 0, 0]])
    sp = SamplingParams.create(1, repetition_penalty=2.0, presence_penalty=0.5,
                               frequency_penalty=0.25)
    got = np.asarray(apply_penalties(logits_BV, prompt_seen_BV, counts_BV, sp))[0]
    want = [
        2.0 / 2,  # prompt token, positive logit: divided by the repetition penalty
        -1.0 * 2,  # prompt token, negative logit: multiplied (CTRL)
        3.0 / 2 - 0.5 - 0.25 * 1,  # generated once: repetition, presence, frequency x1
        -2.0 * 2 - 0.5 - 0.25 * 3,  # generated three times
        0.5,  # unseen: untouched
        1.0,
    ]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    neutral = SamplingParams.create(1)
    np.testing.assert_array_equal(
        apply_penalties(logits_BV, prompt_seen_BV, counts_BV, neutral), logits_BV)


def test_greedy_is_argmax_of_penalised_logits_and_filters_are_per_row():
    logits_BV = jnp.array([[1.0, 3.0, 2.0, 0.0]] * 2)
    sp = SamplingParams.create(2, temperature=0.0, repetition_penalty=[1.0, 10.0])
    seen_BV = jnp.array([[False, True, False, False]] * 2)
    tokens_B, logprobs_B, sampling_logprobs_B = choose_tokens(
        logits_BV, sp, row_keys(sp.seed, jnp.zeros(2, jnp.int32)), seen_BV,
        jnp.zeros((2, 4), jnp.int32), jnp.zeros(2, jnp.int32), jnp.full((8,), -1))
    np.testing.assert_array_equal(tokens_B, [1, 2])  # row 1's penalty demotes token 1
    np.testing.assert_allclose(logprobs_B, np.asarray(jax.nn.log_softmax(logits_BV[0]))[[1, 2]],
                               atol=1e-6)  # model log-probs ignore the penalty
    np.testing.assert_array_equal(sampling_logprobs_B, [0.0, 0.0])


@pytest.mark.parametrize("penalty, value", [
    ("repetition_penalty", 2.0), ("presence_penalty", 1.5), ("frequency_penalty", 1.5)])
def test_each_penalty_alone_reaches_the_choice(penalty, value):
    """choose_tokens skips the penalty pass when every row is neutral; one penalty on one
    row must still apply, to that row only."""
    logits_BV = jnp.array([[1.0, 3.0, 2.0, 0.0]] * 2)
    counts_BV = jnp.array([[0, 1, 0, 0]] * 2)  # token 1 generated once
    neutral = SamplingParams.create(2)._asdict()[penalty][0]
    sp = SamplingParams.create(2, temperature=0.0, **{penalty: [value, neutral]})
    tokens_B, _, _ = choose_tokens(logits_BV, sp, row_keys(sp.seed, jnp.zeros(2, jnp.int32)),
                                   jnp.zeros((2, 4), bool), counts_BV, jnp.ones(2, jnp.int32),
                                   jnp.full((8,), -1))
    np.testing.assert_array_equal(tokens_B, [2, 1])


def test_cutoffs_equal_a_sort_based_reference_with_ties_and_masked_entries():
    """The radix select keeps exactly the tokens a sort + cumulative-sum reference keeps."""
    rng = np.random.default_rng(0)
    B = 256
    logits_BV = rng.normal(0, 2, (B, V)).astype(np.float32)
    logits_BV[:, 100:] = -np.inf  # masked (padded) entries
    logits_BV[::4, 1] = logits_BV[::4, 0]  # exact ties
    top_k_B = rng.integers(0, 12, B)
    top_p_B = rng.uniform(0.05, 1.0, B).astype(np.float32)
    sp = SamplingParams.create(B, temperature=1.0, top_k=top_k_B, top_p=top_p_B)
    kept_BV = np.isfinite(np.asarray(jax.jit(filter_logits)(jnp.asarray(logits_BV), sp)))
    for b in range(B):
        x = logits_BV[b]
        order = np.argsort(-x, kind="stable")
        k = top_k_B[b] or V
        kth = x[order[k - 1]]
        in_k = x >= kth  # ties at the k-th value are kept
        p = np.exp(x - x.max()) * in_k
        p = p / p.sum()
        mass_above = np.array([p[x > v].sum() for v in x])  # mass strictly more likely
        want = in_k & (mass_above < top_p_B[b]) if top_p_B[b] < 1 else in_k
        boundary = np.abs(mass_above - top_p_B[b]) < 1e-5  # float-sum order may differ here
        assert np.array_equal(kept_BV[b] | boundary, want | boundary), b
    assert kept_BV.sum(1).min() >= 1


@pytest.mark.parametrize("spread", [1e-6, 1.0, 30.0])
def test_radix_select_equals_a_sorted_reference(spread):
    """At spread 1e-6 the keys share their top bits, so all three radix levels decide."""
    rng = np.random.default_rng(1)
    B, N = 8, 4096
    x_BN = (1.0 + rng.normal(0, spread, (B, N))).astype(np.float32)
    x_BN[:, ::7] = x_BN[:, 3:4]  # ties
    x_BN[:, -64:] = -np.inf
    w_BN = rng.random((B, N)).astype(np.float32)
    w_BN[:, ::5] = 0.0
    keys_BN = np.asarray(_ordered_keys(jnp.asarray(x_BN)))
    need_B, want_B = np.zeros(B, np.float32), np.zeros(B, np.uint32)
    for b in range(B):
        distinct = np.unique(keys_BN[b])[::-1]  # largest first
        mass = np.array([w_BN[b][keys_BN[b] == k].sum(dtype=np.float64) for k in distinct])
        cum = np.cumsum(mass)
        if b == B - 1:  # more than the row holds: every weighted key is kept
            need_B[b], want_B[b] = cum[-1] * 1.01, distinct[mass > 0][-1]
            continue
        j = rng.choice(np.flatnonzero(mass > 0))
        need_B[b] = (cum[j] + (cum[j - 1] if j else 0.0)) / 2  # midway: no rounding ties
        want_B[b] = distinct[j]
    got_B = jax.jit(_largest_key_B)(jnp.asarray(keys_BN), jnp.asarray(w_BN), jnp.asarray(need_B))
    np.testing.assert_array_equal(np.asarray(got_B), want_B)


def test_inverse_cdf_search_matches_a_cumsum_reference_and_never_returns_a_zero():
    """`_first_reaching` (block scan, then in-block scan) equals numpy's searchsorted on the
    running sum; thresholds at or past the total land on the last positive entry."""
    rng = np.random.default_rng(1)
    x_BV = rng.exponential(1.0, (64, 384)).astype(np.float32)
    x_BV[rng.random(x_BV.shape) < 0.3] = 0.0
    x_BV[:, :5] = 0.0  # zeros at the start, inside the first block
    x_BV[:, 250:] = 0.0  # a zero tail across a block boundary
    cum_BV = np.cumsum(x_BV.astype(np.float64), -1)
    total_B = cum_BV[:, -1]
    first_B = np.array([np.flatnonzero(row).min() for row in x_BV])
    last_B = np.array([np.flatnonzero(row).max() for row in x_BV])
    frac_B = rng.uniform(0.001, 1.0, 64)
    frac_B[:4] = [0.0, 1.0, 1.0 + 1e-6, 1.5]
    threshold_B = (frac_B * total_B).astype(np.float32)
    blocks = jnp.asarray(x_BV).reshape(64, 3, 128)
    for exceeding, side, rows in ((True, "right", slice(0, 64)), (False, "left", slice(1, 64))):
        got_B = np.asarray(_first_reaching(blocks, jnp.asarray(threshold_B),
                                           exceeding=exceeding))[rows]
        want_B = np.minimum(last_B, [np.searchsorted(c, t, side) for c, t in
                                     zip(cum_BV, threshold_B, strict=True)])[rows]
        assert np.all(x_BV[rows][np.arange(len(got_B)), got_B] > 0), exceeding
        # float32 block sums may round differently from the float64 reference
        near_B = np.abs(cum_BV[rows][np.arange(len(got_B)), want_B] - threshold_B[rows]) \
            < 1e-5 * total_B[rows]
        assert np.all((got_B == want_B) | near_B), (exceeding, got_B, want_B)
    got_B = np.asarray(_first_reaching(blocks, jnp.asarray(threshold_B), exceeding=True))
    assert got_B[0] == first_B[0]  # u = 0 draws the first token that has mass
    np.testing.assert_array_equal(got_B[1:4], last_B[1:4])


def test_sample_categorical_log_probs_and_masked_tokens():
    """Drawn tokens are never -inf logits; the returned log-prob is log_softmax's."""
    rng = np.random.default_rng(2)
    logits_BV = rng.normal(0, 3, (512, 300)).astype(np.float32)
    logits_BV[:, ::3] = -np.inf
    keys_B = row_keys(jnp.arange(512), jnp.zeros(512, jnp.int32))
    tokens_B, logprobs_B = jax.jit(sample_categorical)(jnp.asarray(logits_BV), keys_B)
    tokens_B = np.asarray(tokens_B)
    assert np.all(np.isfinite(logits_BV[np.arange(512), tokens_B]))
    want_B = np.asarray(jax.nn.log_softmax(logits_BV, -1))[np.arange(512), tokens_B]
    np.testing.assert_allclose(logprobs_B, want_B, atol=1e-5)
