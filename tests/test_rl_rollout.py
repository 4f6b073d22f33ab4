"""Rollouts: recorded log-probs equal the training forward's, one compile across
iterations, the policy's own arrays (no copy)."""

import dataclasses

import jax
import numpy as np
import optax
from flax import nnx

from llm.model import ModelConfig, Transformer
from llm.rl import rollout as rollout_lib
from llm.rl import sequences

P, N, G = 12, 10, 3


def tiny(scan_layers=True):
    cfg = dataclasses.replace(ModelConfig(), vocab_size=200, d_model=32, n_layers=2,
                              n_heads=4, n_kv_heads=2, head_dim=8, d_ff=48, max_seq_len=64,
                              scan_layers=scan_layers)
    return nnx.split(Transformer(cfg, nnx.Rngs(0)))


def prompts(seed, rows=2):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, P + 1, rows).astype(np.int32)
    tokens = np.where(np.arange(P)[None] < lengths[:, None], rng.integers(3, 200, (rows, P)), 0)
    return tokens.astype(np.int32), lengths


def sample(graphdef, params, seed, **controls):
    tokens, lengths = prompts(seed)
    return rollout_lib.rollout(graphdef, params, tokens, lengths, num_generations=G,
                               max_new_tokens=N, rng=jax.random.key(seed), eos_ids=[1],
                               unstack_layers=controls.pop("unstack_layers", True),
                               **controls)


def test_recorded_logprobs_equal_the_training_forward():
    graphdef, params = tiny()
    forward = jax.jit(lambda p, rows, t: sequences.completion_logprobs(
        nnx.merge(graphdef, p), rows, t, N)[0])
    for temperature in (1.0, 0.7):
        ro = sample(graphdef, params, 0, temperature=temperature, top_p=1.0)
        assert ro.completions_RN.shape == (2 * G, N)
        rows = sequences.training_rows(ro.prompt_tokens_RP, ro.prompt_lengths_R,
                                       ro.completions_RN, ro.lengths_R)
        logp_RN = forward(params, rows, temperature)
        mask_RN = sequences.completion_mask(ro.lengths_R, N)
        diff_RN = (np.asarray(logp_RN) - ro.logprobs_RN) * mask_RN
        assert np.abs(diff_RN).max() < 1e-5, np.abs(diff_RN).max()
        # So the first update's ratio pi_theta / pi_old is 1 on every token.
        assert np.abs((np.exp(diff_RN) - 1) * mask_RN).max() < 1e-5
        # Without filters the sampled distribution is the recorded one.
        np.testing.assert_allclose(ro.sampling_logprobs_RN, ro.logprobs_RN, atol=1e-5)


def test_rollouts_compile_once_and_read_the_policy_arrays_in_place():
    graphdef, params = tiny()
    tx = optax.sgd(0.1)
    opt_state = tx.init(params)
    rollout_lib._sample.clear_cache()  # count this test's compiles only
    before = rollout_lib.TRACES["rollout"]
    param_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
    for iteration in range(3):  # new prompts (other lengths), new weights, new seeds
        live_before = {id(x) for x in jax.live_arrays()}
        ro = sample(graphdef, params, iteration, temperature=1.0, top_p=1.0)
        new = [x for x in jax.live_arrays() if id(x) not in live_before]
        # Nothing the size of the weights stays behind: no second copy was made and kept.
        assert sum(x.nbytes for x in new) < param_bytes / 4
        assert ro.lengths_R.min() >= 1
        grads = jax.tree.map(lambda p: p * 0.01, params)
        updates, opt_state = tx.update(grads, opt_state)
        params = optax.apply_updates(params, updates)
    assert rollout_lib.TRACES["rollout"] - before == 1


def test_filters_make_the_sampled_distribution_differ():
    graphdef, params = tiny()
    ro = sample(graphdef, params, 0, temperature=1.0, top_k=5)
    mask_RN = sequences.completion_mask(ro.lengths_R, N) > 0
    # Top-k renormalises over 5 tokens: each draw is likelier there than under the model.
    assert np.all(ro.sampling_logprobs_RN[mask_RN] >= ro.logprobs_RN[mask_RN] - 1e-6)
    assert np.any(ro.sampling_logprobs_RN[mask_RN] > ro.logprobs_RN[mask_RN] + 1e-3)
    assert rollout_lib.uses_filters({"top_k": 5}) and not rollout_lib.uses_filters(
        {"top_k": 0, "top_p": 1.0})
