"""Sampler must-holds: cached greedy == full recompute, log-probs, stops, compile-once, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm import sharding as sharding_lib
from llm.model import ModelConfig, Transformer
from llm.sampling import decode as sampling
from llm.sampling import filters as sampling_filters
from llm.sampling.decode import SamplingParams

# Larger init std than training so the tiny model's distributions are peaked, not uniform,
# but not so large that rounding swamps the 1e-5 log-prob checks: the cached and the full
# forward use different fp32 matmul kernels (1 row vs T rows), and with std 0.3 (gain ~2.4
# per linear) their difference measured 0.6-1.6e-5 across seeds; with 0.2, 0.3-0.7e-5.
CFG = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=16, d_ff=128, max_seq_len=128, init_std=0.2)
PROMPTS = [[5, 17, 99, 3, 42, 7, 8], [11, 12], [200, 1, 2, 3], [9]]
MAX_LEN = 64  # one compile key (batch 4, bucket 8, cache 64) shared by most tests


@pytest.fixture(scope="module")
def split():
    return nnx.split(Transformer(CFG, nnx.Rngs(0)))


def ragged(prompts=PROMPTS, width=None):
    width = width or max(map(len, prompts))
    tokens_BP = np.zeros((len(prompts), width), np.int32)
    for b, p in enumerate(prompts):
        tokens_BP[b, :len(p)] = p
    return tokens_BP, np.array([len(p) for p in prompts], np.int32)


def full_forward_logprobs(graphdef, params, prompts, out):
    """Training-style forward (no cache) over prompt + generated tokens: log-softmax_BTV."""
    seqs = [list(p) + out.tokens_BN[b, :out.lengths_B[b]].tolist()
            for b, p in enumerate(prompts)]
    tokens_BT, _ = ragged(seqs)
    model = nnx.merge(graphdef, params)
    logits_BTV, _ = jax.jit(lambda t: model(t))(tokens_BT)
    return np.asarray(jax.nn.log_softmax(logits_BTV, axis=-1))


def assert_greedy_matches_recompute(graphdef, params, prompts, out):
    logprobs_BTV = full_forward_logprobs(graphdef, params, prompts, out)
    for b, p in enumerate(prompts):
        for i in range(out.lengths_B[b]):
            lp_V = logprobs_BTV[b, len(p) + i - 1]
            token = out.tokens_BN[b, i]
            # A flip at a near-tie (top two within 1e-5) is not a failure.
            assert token == lp_V.argmax() or lp_V.max() - lp_V[token] <= 1e-5, (b, i)
            np.testing.assert_allclose(out.logprobs_BN[b, i], lp_V[token], atol=1e-5)


def test_greedy_cache_decode_equals_full_recompute_ragged(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=[12, 20, 5, 16])
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    np.testing.assert_array_equal(out.lengths_B, [12, 20, 5, 16])
    assert out.finish_reason == ["length"] * 4
    assert_greedy_matches_recompute(graphdef, params, PROMPTS, out)
    # Extra right padding in the input array changes nothing.
    wide_BP, _ = ragged(width=30)
    out_wide = sampling.generate(graphdef, params, wide_BP, lengths_B, sp, max_len=MAX_LEN)
    np.testing.assert_array_equal(out_wide.tokens_BN, out.tokens_BN)


def test_greedy_decode_across_cache_windows_equals_full_recompute(split):
    """Rows cross the 64-slot window at different steps; each step must still see every
    filled slot (the loop widens the window before any running row outgrows it)."""
    graphdef, params = split
    assert sampling.decode_windows(128) == [64, 128]
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=[100, 60, 110, 80])
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=128)
    np.testing.assert_array_equal(out.lengths_B, [100, 60, 110, 80])
    assert_greedy_matches_recompute(graphdef, params, PROMPTS, out)


def test_sampled_logprobs_equal_training_forward(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.8, top_p=0.9, top_k=[0, 5, 0, 20],
                               seed=[1, 2, 3, 4], max_new_tokens=10)
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    logprobs_BTV = full_forward_logprobs(graphdef, params, PROMPTS, out)
    for b, p in enumerate(PROMPTS):
        n = out.lengths_B[b]
        want = logprobs_BTV[b, np.arange(len(p) - 1, len(p) + n - 1), out.tokens_BN[b, :n]]
        np.testing.assert_allclose(out.logprobs_BN[b, :n], want, atol=1e-5)
        # Sampling log-probs: the same filters applied to the training forward's logits.
        row = SamplingParams(*(np.repeat(np.asarray(x)[b:b + 1], n) for x in sp))
        steps_NV = logprobs_BTV[b, len(p) - 1:len(p) + n - 1]
        filtered_NV = jax.nn.log_softmax(sampling_filters.filter_logits(steps_NV, row), -1)
        np.testing.assert_allclose(out.sampling_logprobs_BN[b, :n],
                                   np.asarray(filtered_NV)[np.arange(n), out.tokens_BN[b, :n]],
                                   atol=1e-5)
        assert not np.allclose(out.sampling_logprobs_BN[b, :n], out.logprobs_BN[b, :n])


def test_greedy_on_8_device_mesh_equals_single_device(split):
    graphdef, params = split
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef_m, params_m = sharding_lib.init_sharded(lambda: Transformer(CFG, nnx.Rngs(0)),
                                                     mesh)
    leaf = jax.tree.leaves(params_m)[0]
    assert len(leaf.sharding.device_set) == 8
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=[12, 20, 5, 16])
    out_m = sampling.generate(graphdef_m, params_m, tokens_BP, lengths_B, sp, mesh=mesh,
                              max_len=MAX_LEN)
    assert_greedy_matches_recompute(graphdef, params, PROMPTS, out_m)
    out_1 = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    np.testing.assert_allclose(out_m.logprobs_BN, out_1.logprobs_BN, atol=1e-5)


@pytest.mark.parametrize("cache_len, new_tokens, chunk", [
    (MAX_LEN, 15, 4),
    (128, 90, 25),  # chunks that start inside one cache window and end in the next
])
def test_chunked_decode_carries_cache(split, cache_len, new_tokens, chunk):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.9, seed=[5, 6, 7, 8],
                               max_new_tokens=new_tokens)
    whole = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=cache_len)
    state, max_len = sampling.prefill(graphdef, params, tokens_BP, lengths_B, sp,
                                      max_len=cache_len)
    steps = 0
    while not bool(np.all(np.asarray(state.done_B))):
        state = sampling.decode(graphdef, params, state, max_len=max_len, max_steps=chunk)
        steps += 1
    chunked = sampling.to_output(state)
    # 1 token from prefill, the rest from decode calls of `chunk` steps each
    assert steps == -(-(new_tokens - 1) // chunk)
    np.testing.assert_array_equal(chunked.tokens_BN, whole.tokens_BN)
    np.testing.assert_allclose(chunked.logprobs_BN, whole.logprobs_BN, atol=1e-6)


def test_stop_ids_end_rows_and_eos_is_reported(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=20)
    free = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    stop_id, eos_id = int(free.tokens_BN[0, 3]), int(free.tokens_BN[1, 5])
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp,
                            eos_ids=[eos_id], stop_token_ids=[stop_id], max_len=MAX_LEN)
    for b in range(4):
        row = free.tokens_BN[b].tolist()
        hits = [i for i, t in enumerate(row) if t in (stop_id, eos_id)]
        if not hits:
            assert out.finish_reason[b] == "length" and out.lengths_B[b] == 20
            continue
        n = hits[0] + 1
        assert out.lengths_B[b] == n  # ends at the first stop, which is kept as last token
        np.testing.assert_array_equal(out.tokens_BN[b, :n], row[:n])
        assert not out.tokens_BN[b, n:].any()
        assert out.finish_reason[b] == ("eos" if row[n - 1] == eos_id else "stop")
    assert out.finish_reason[0] in ("stop", "eos") and out.lengths_B[0] <= 4
    # The loop exits once every row has stopped, not after max_new_tokens steps.
    state, max_len = sampling.prefill(graphdef, params, tokens_BP, lengths_B, sp,
                                      max_len=MAX_LEN, eos_ids=[eos_id],
                                      stop_token_ids=[stop_id, *out.tokens_BN[[2, 3], 0]])
    state = sampling.decode(graphdef, params, state, max_len=max_len)
    ran = sampling.to_output(state)
    assert int(state.steps) == ran.lengths_B.max() - 1 < 19


def test_min_new_tokens_suppresses_eos(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    common = dict(temperature=1.0, top_p=1.0, seed=[0, 1, 2, 3], max_new_tokens=12)
    free = sampling.generate(graphdef, params, tokens_BP, lengths_B,
                             SamplingParams.create(4, **common), max_len=MAX_LEN)
    # Make every row's first sampled token (and a few likely others) an EOS: unheld, all
    # rows stop at once; with min_new_tokens=6 none may stop before its 6th token.
    eos_ids = sorted(set(free.tokens_BN[:, :2].ravel().tolist()))[:8]
    early = sampling.generate(graphdef, params, tokens_BP, lengths_B,
                              SamplingParams.create(4, **common), eos_ids=eos_ids,
                              max_len=MAX_LEN)
    np.testing.assert_array_equal(early.lengths_B, 1)
    held = sampling.generate(graphdef, params, tokens_BP, lengths_B,
                             SamplingParams.create(4, min_new_tokens=6, **common),
                             eos_ids=eos_ids, max_len=MAX_LEN)
    assert np.all(held.lengths_B >= 6)
    assert not np.isin(held.tokens_BN[:, :5], eos_ids).any()
    reasons = zip(held.finish_reason, held.lengths_B, strict=True)
    assert all(r == "eos" for r, n in reasons if n < 12)


def test_changing_knobs_never_recompiles(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    run = lambda **kw: sampling.generate(
        graphdef, params, tokens_BP, lengths_B, SamplingParams.create(4, **kw), max_len=MAX_LEN)
    run(temperature=0.7, top_p=0.9, max_new_tokens=8)  # may be the first call (compiles)
    sizes = (sampling._prefill._cache_size(), sampling._decode._cache_size())
    run(temperature=0.0, top_p=1.0, max_new_tokens=8)
    run(temperature=1.3, top_p=0.5, top_k=7, min_p=0.1, repetition_penalty=1.2,
        presence_penalty=0.3, frequency_penalty=0.1, seed=9, min_new_tokens=2,
        max_new_tokens=30)
    # A different prompt length in the same bucket (8) does not recompile either.
    short_BP, short_B = ragged([[1, 2], [3], [4, 5, 6], [7]])
    sampling.generate(graphdef, params, short_BP, short_B,
                      SamplingParams.create(4, max_new_tokens=8), max_len=MAX_LEN)
    assert (sampling._prefill._cache_size(), sampling._decode._cache_size()) == sizes


def _primitives(jaxpr) -> set[str]:
    """Every primitive in a jaxpr, including nested calls (pjit, custom_jvp) but not conds."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        if eqn.primitive.name == "cond":
            continue
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    names |= _primitives(inner)
    return names


def test_no_vocabulary_sort_and_cutoffs_only_under_cond():
    """No sort at all; the top-k/top-p search sits in the lax.cond branch rows opt into."""
    sp = SamplingParams.create(2)
    jaxpr = jax.make_jaxpr(sampling_filters.filter_logits)(jnp.zeros((2, 128)), sp).jaxpr
    outside = _primitives(jaxpr)
    assert "sort" not in outside and "top_k" not in outside and "cond" in outside
    cond = next(e for e in jaxpr.eqns if e.primitive.name == "cond")
    branches = [_primitives(br.jaxpr) for br in cond.params["branches"]]
    assert not any("sort" in names for names in branches)
    assert sorted(len(names) for names in branches)[0] <= 2  # the skip branch is trivial


@pytest.mark.parametrize("bad, match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-0.1),
                                                             "temperature"),
    (dict(top_k=-1), "top_k"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=9, max_new_tokens=4), "min_new_tokens"),
    (dict(typo=1), "unknown"),
    # Would overflow the scaled logits (NaN log-probs); a seed past int32 would wrap.
    (dict(temperature=1e-39), "temperature"), (dict(seed=2**32), "seed"),
])
def test_invalid_sampling_params_raise_one_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        SamplingParams.create(2, **bad)


def test_invalid_requests_raise_value_error(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    with pytest.raises(ValueError, match="max_new_tokens"):  # beyond the model's context
        sampling.generate(graphdef, params, tokens_BP, lengths_B,
                          SamplingParams.create(4, max_new_tokens=125), max_len=128)
    with pytest.raises(ValueError, match="max_seq_len"):
        sampling.generate(graphdef, params, tokens_BP, lengths_B,
                          SamplingParams.create(4, max_new_tokens=4), max_len=512)
    with pytest.raises(ValueError, match="empty prompt"):
        sampling.generate(graphdef, params, tokens_BP, np.array([7, 0, 4, 1]),
                          SamplingParams.create(4, max_new_tokens=4))
    with pytest.raises(ValueError, match="rows"):
        sampling.generate(graphdef, params, tokens_BP, lengths_B,
                          SamplingParams.create(3, max_new_tokens=4))
    with pytest.raises(ValueError, match="max_len=5: .*longest prompt"):
        sampling.generate(graphdef, params, tokens_BP, lengths_B,
                          SamplingParams.create(4, max_new_tokens=1), max_len=5)
    vocab = CFG.vocab_size
    for where, ids in (("eos_ids", dict(eos_ids=[vocab])),
                       ("stop_token_ids", dict(stop_token_ids=[3, -1]))):
        with pytest.raises(ValueError, match=f"{where}=.*expected ids in \\[0, {vocab}\\)"):
            sampling.generate(graphdef, params, tokens_BP, lengths_B,
                              SamplingParams.create(4, max_new_tokens=4), **ids)


def test_bucket_length():
    assert [sampling.bucket_length(n) for n in (1, 8, 9, 33, 64, 65, 130)] == \
        [8, 8, 16, 64, 64, 128, 192]


def test_decoding_without_unstacking_gives_the_same_tokens(split):
    graphdef, params = split
    tokens_BP, lengths_B = ragged()
    sp = SamplingParams.create(4, temperature=0.8, seed=[1, 2, 3, 4], max_new_tokens=10)
    fast = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    compiled = sampling._decode._cache_size()
    lean = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN,
                             unstack_layers=False)
    assert sampling._decode._cache_size() == compiled + 1  # the switch reached the jit
    np.testing.assert_array_equal(lean.tokens_BN, fast.tokens_BN)
    np.testing.assert_allclose(lean.logprobs_BN, fast.logprobs_BN, atol=1e-6)
