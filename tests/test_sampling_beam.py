"""Beam search: width 1 is greedy; a wide enough beam finds the exhaustive optimum."""

import itertools

import jax
import numpy as np
import pytest
from flax import nnx

from llm.model import ModelConfig, Transformer
from llm.sampling import beam
from llm.sampling import decode as sampling

# A 4-token vocabulary (padded to 128, padded entries masked) so 4**3 sequences enumerate.
CFG = ModelConfig(vocab_size=4, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16,
                  d_ff=128, max_seq_len=64, init_std=0.5)
PROMPTS_BP = np.array([[1, 2, 3, 0], [2, 0, 0, 0]], np.int32)
LENGTHS_B = np.array([3, 1], np.int32)


@pytest.fixture(scope="module")
def split():
    return nnx.split(Transformer(CFG, nnx.Rngs(1)))


def test_width_one_equals_greedy(split):
    graphdef, params = split
    greedy = sampling.generate(graphdef, params, PROMPTS_BP, LENGTHS_B,
                               sampling.SamplingParams.create(2, temperature=0.0,
                                                              max_new_tokens=6), max_len=32)
    out = beam.beam_search(graphdef, params, PROMPTS_BP, LENGTHS_B, beam_width=1,
                           max_new_tokens=6, max_len=32)
    np.testing.assert_array_equal(out.tokens_BN, greedy.tokens_BN)
    np.testing.assert_allclose(out.logprobs_BN, greedy.logprobs_BN, atol=1e-5)
    np.testing.assert_allclose(out.scores_B, greedy.logprobs_BN.sum(1), atol=1e-4)


def test_wide_beam_returns_exhaustive_best(split):
    graphdef, params = split
    n = 3
    out = beam.beam_search(graphdef, params, PROMPTS_BP, LENGTHS_B, beam_width=16,
                           max_new_tokens=n, max_len=32)  # 16 = 4**(n-1): exhaustive
    model = nnx.merge(graphdef, params)
    forward = jax.jit(lambda t: jax.nn.log_softmax(model(t)[0], axis=-1))
    greedy = sampling.generate(graphdef, params, PROMPTS_BP, LENGTHS_B,
                               sampling.SamplingParams.create(2, temperature=0.0,
                                                              max_new_tokens=n), max_len=32)
    for b in range(2):
        prompt = PROMPTS_BP[b, :LENGTHS_B[b]].tolist()
        candidates = [list(c) for c in itertools.product(range(CFG.vocab_size), repeat=n)]
        seqs_XT = np.array([prompt + c for c in candidates], np.int32)
        logp_XTV = np.asarray(forward(seqs_XT))
        L = len(prompt)
        score_X = sum(logp_XTV[np.arange(len(candidates)), L - 1 + i, seqs_XT[:, L + i]]
                      for i in range(n))
        best = int(np.argmax(score_X))
        np.testing.assert_array_equal(out.tokens_BN[b], candidates[best])
        np.testing.assert_allclose(out.scores_B[b], score_X[best], atol=1e-4)
        print("beam == greedy:", out.tokens_BN[b].tolist() == greedy.tokens_BN[b].tolist())
    assert out.finish_reason == ["length", "length"]


def test_eos_finishes_a_beam(split):
    graphdef, params = split
    free = beam.beam_search(graphdef, params, PROMPTS_BP, LENGTHS_B, beam_width=4,
                            max_new_tokens=5, max_len=32)
    eos = int(free.tokens_BN[0, 1])
    out = beam.beam_search(graphdef, params, PROMPTS_BP, LENGTHS_B, beam_width=4,
                           max_new_tokens=5, max_len=32, eos_ids=[eos])
    for b in range(2):
        n = int(out.lengths_B[b])
        assert (out.finish_reason[b] == "eos") == (out.tokens_BN[b, n - 1] == eos)
        assert eos not in out.tokens_BN[b, :n - 1].tolist()
        assert not out.tokens_BN[b, n:].any()
