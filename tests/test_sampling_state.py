"""Sampler state carried through the decode loop, checked end to end against a full forward.

Penalties read the row's real prompt and the tokens it generated (never its right padding);
stop ids wait for min_new_tokens; a row's random draws depend on its own seed only; and
`reshard_for_decode` changes where weights live, not what is decoded.
"""

import functools

import jax
import numpy as np
import pytest
from flax import nnx

from configs.models import SIZES
from llm import sharding as sharding_lib
from llm.model import ModelConfig, Transformer
from llm.sampling import decode as sampling
from llm.sampling.decode import SamplingParams

# The tiny model with a larger init std (see tests/test_sampling.py): peaked distributions,
# so greedy choices are rarely near-ties and penalties visibly change them.
CFG = ModelConfig(**{**SIZES["tiny"], "init_std": 0.2})
MAX_LEN = 64  # cache length; every prompt here fits one 8-token bucket
WIDTH = 8  # prompt array width = the bucket, so the padding written here reaches prefill
TIE = 1e-5  # top-two logits this close may flip between the cached and the full forward
PROMPTS = [[5, 17, 99, 3, 42, 7, 8], [11, 12, 300], [200, 1, 2, 3, 4], [9, 77]]


@pytest.fixture(scope="module")
def split():
    return nnx.split(Transformer(CFG, nnx.Rngs(0)))


def ragged(prompts, pad_B=None):
    """Right-padded [B, WIDTH] prompts; row b's padding slots hold pad_B[b] (default 0)."""
    tokens_BP = np.zeros((len(prompts), WIDTH), np.int32)
    for b, p in enumerate(prompts):
        tokens_BP[b] = p + [0 if pad_B is None else pad_B[b]] * (WIDTH - len(p))
    return tokens_BP, np.array([len(p) for p in prompts], np.int32)


@functools.cache
def _forward(graphdef):
    return jax.jit(lambda params, tokens_BT: nnx.merge(graphdef, params)(tokens_BT)[0])


def next_logits(graphdef, params, prompts, out):
    """Full forward (no cache) over prompt + generated tokens; per row the [n, V] logits
    that chose each generated token."""
    seqs = [p + out.tokens_BN[b, :out.lengths_B[b]].tolist() for b, p in enumerate(prompts)]
    tokens_BT = np.zeros((len(seqs), MAX_LEN), np.int32)
    for b, s in enumerate(seqs):
        tokens_BT[b, :len(s)] = s
    logits_BTV = np.asarray(_forward(graphdef)(params, tokens_BT))
    return [logits_BTV[b, len(p) - 1:len(p) - 1 + out.lengths_B[b]]
            for b, p in enumerate(prompts)]


def penalise(logits_V, seen, counts_V, rep, presence, frequency):
    """Numpy reference: CTRL repetition penalty on `seen` ids, then frequency and presence
    penalties from the generated-token counts."""
    out = logits_V.astype(np.float64).copy()
    seen = sorted(seen)
    out[seen] = np.where(out[seen] > 0, out[seen] / rep, out[seen] * rep)
    return out - frequency * counts_V - presence * (counts_V > 0)


def greedy_margin(logits_V, token):
    """How far `token` falls short of the row maximum (0 when it is the argmax)."""
    return logits_V.max() - logits_V[token]


PENALTIES = {
    "repetition": dict(repetition_penalty=[2.0, 3.0, 1.5, 2.5]),
    "presence_frequency": dict(presence_penalty=[2.0, 0.0, 1.0, 0.5],
                               frequency_penalty=[0.0, 0.3, 0.5, 1.0]),
}


@pytest.mark.parametrize("case", PENALTIES)
def test_greedy_with_penalties_is_argmax_of_penalised_full_forward(split, case):
    """Each greedy token is the argmax of the full forward's logits penalised in numpy:
    repetition over the row's real prompt (positions < its length) and its generated
    tokens, presence / frequency over generated tokens with their counts. Each row's
    padding holds its own unpenalised first choice, so counting padding as seen would change
    that row's first token. The loop below also checks that each plausible wrong penalty set
    would have changed some token by a clear margin, so this setup can catch it."""
    graphdef, params = split
    n_new = 20
    plain_BP, lengths_B = ragged(PROMPTS)
    free = sampling.generate(graphdef, params, plain_BP, lengths_B,
                             SamplingParams.create(4, temperature=0.0, max_new_tokens=1),
                             max_len=MAX_LEN)
    pad_B = free.tokens_BN[:, 0]
    assert not any(pad_B[b] in p for b, p in enumerate(PROMPTS))
    tokens_BP, _ = ragged(PROMPTS, pad_B)
    knobs = PENALTIES[case]
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=n_new, **knobs)
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)
    np.testing.assert_array_equal(out.lengths_B, n_new)
    logits = next_logits(graphdef, params, PROMPTS, out)

    # Reference penalty sets; the wrong ones are what a broken loop would use instead.
    def variants(b, i):
        prompt, gen = PROMPTS[b], out.tokens_BN[b, :i].tolist()
        counts_V = np.bincount(gen, minlength=CFG.padded_vocab).astype(np.float64)
        padding = tokens_BP[b, lengths_B[b]:].tolist()
        in_prompt_V = np.bincount(prompt, minlength=CFG.padded_vocab).astype(np.float64)
        rep, pres, freq = (float(np.asarray(getattr(sp, k))[b]) for k in (
            "repetition_penalty", "presence_penalty", "frequency_penalty"))
        ref = dict(seen=set(prompt) | set(gen), counts_V=counts_V)
        wrong = {
            "padding seen": dict(ref, seen=ref["seen"] | set(padding)),
            "prompt unseen": dict(ref, seen=set(gen)),
            "output unseen": dict(ref, seen=set(prompt)),
            "counts as presence": dict(ref, counts_V=(counts_V > 0) * 1.0),
            "prompt counted": dict(ref, counts_V=counts_V + in_prompt_V),
        }
        return {name: penalise(logits[b][i], rep=rep, presence=pres, frequency=freq, **kw)
                for name, kw in {"ref": ref, **wrong}.items()}

    caught = set()
    for b in range(4):
        diverged = set()  # a wrong variant is judged at its first disagreement only
        for i in range(n_new):
            token = out.tokens_BN[b, i]
            v = variants(b, i)
            assert greedy_margin(v["ref"], token) <= TIE, (b, i, token, v["ref"].argmax())
            for name, pen in v.items():
                if name == "ref" or name in diverged or pen.argmax() == token:
                    continue
                diverged.add(name)
                # A loop that used this set would pick pen.argmax() here, clearly not the
                # reference argmax: the assertion above would fail.
                if min(greedy_margin(v["ref"], pen.argmax()), greedy_margin(pen, token)) > 1e-3:
                    caught.add(name)
    expected = {"repetition": {"padding seen", "prompt unseen", "output unseen"},
                "presence_frequency": {"counts as presence", "prompt counted"}}[case]
    assert expected <= caught, f"setup not sensitive to {expected - caught}"


def test_stop_token_ids_wait_for_min_new_tokens(split):
    """A stop id that greedy picks early is held back until min_new_tokens, then ends the
    row with finish 'stop' at the first step it is allowed and chosen; a row without
    min_new_tokens in the same batch stops at once."""
    graphdef, params = split
    # Rows 0-2 share a prompt whose greedy second token is the stop id: row 0 holds it for
    # 4 tokens, row 1 not at all, row 2 for 14 (where row 0 meets it again). Row 3 only
    # fills the batch of 4 the other tests compile for.
    prompts = [PROMPTS[3]] * 3 + [PROMPTS[1]]
    tokens_BP, lengths_B = ragged(prompts)
    n_max, hold, late = 24, 4, 14
    greedy = dict(temperature=0.0, max_new_tokens=n_max)
    free = sampling.generate(graphdef, params, tokens_BP, lengths_B,
                             SamplingParams.create(4, **greedy), max_len=MAX_LEN)
    stop_id = int(free.tokens_BN[0, 1])
    assert stop_id not in free.tokens_BN[0, 2:]  # unheld, it recurs only once held back
    out = sampling.generate(graphdef, params, tokens_BP, lengths_B,
                            SamplingParams.create(4, min_new_tokens=[hold, 0, late, 0],
                                                  **greedy),
                            stop_token_ids=[stop_id], max_len=MAX_LEN)
    # Row 1 is unaffected: it ends at the stop id, its second token.
    assert out.finish_reason[1] == "stop" and out.lengths_B[1] == 2
    np.testing.assert_array_equal(out.tokens_BN[1, :2], free.tokens_BN[1, :2])
    # Row 0: no stop id among its first `hold` tokens, then it ends at the first one.
    n = out.lengths_B[0]
    assert out.finish_reason[0] == "stop" and n == late + 1
    row = out.tokens_BN[0, :n].tolist()
    assert stop_id not in row[:-1] and row[-1] == stop_id
    # Each token is the full forward's argmax, with the stop id masked while held.
    for i, logits_V in enumerate(next_logits(graphdef, params, prompts[:1], out)[0]):
        if i < hold:
            logits_V = np.where(np.arange(logits_V.size) == stop_id, -np.inf, logits_V)
        assert greedy_margin(logits_V, row[i]) <= TIE, (i, row[i], logits_V.argmax())
    # Row 2 may stop at index `late` (its min_new_tokens-th token has been produced) and
    # greedy picks the stop id there: it ends right then, with row 0's tokens.
    assert out.finish_reason[2] == "stop" and out.lengths_B[2] == late + 1
    np.testing.assert_array_equal(out.tokens_BN[2], out.tokens_BN[0])


def test_sampled_row_depends_only_on_its_prompt_and_seed(split):
    """temperature 0.7 / top_p 0.9: a row alone and the same row inside a batch of three
    (with different neighbours, at index 1 or 2) draw identical tokens."""
    graphdef, params = split
    mine, seed = PROMPTS[0], 11
    others = [(PROMPTS[0], 12), (PROMPTS[3], 11), (PROMPTS[2], 5)]

    def run(rows):
        tokens_BP, lengths_B = ragged([p for p, _ in rows])
        sp = SamplingParams.create(len(rows), temperature=0.7, top_p=0.9, max_new_tokens=16,
                                   seed=[s for _, s in rows])
        return sampling.generate(graphdef, params, tokens_BP, lengths_B, sp, max_len=MAX_LEN)

    alone = run([(mine, seed)])
    batches = {1: run([others[0], (mine, seed), others[1]]),
               2: run([others[2], others[0], (mine, seed)])}
    for index, out in batches.items():
        assert out.lengths_B[index] == alone.lengths_B[0] == 16
        np.testing.assert_array_equal(out.tokens_BN[index], alone.tokens_BN[0], err_msg=index)
        np.testing.assert_allclose(out.logprobs_BN[index], alone.logprobs_BN[0], atol=1e-5)
    # The seed matters: the same prompt with seed 12 draws something else.
    assert not np.array_equal(batches[1].tokens_BN[0], alone.tokens_BN[0])


def test_reshard_for_decode_replicates_over_fsdp_and_decodes_the_same():
    """On a data=2, fsdp=2, tensor=2 mesh: resharded weights are tensor-parallel only (no
    'fsdp' in any spec), hold the same values, and greedy decoding with them gives the same
    tokens as the training-sharded weights and as the same weights on one device."""
    mesh = sharding_lib.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    graphdef, trained = sharding_lib.init_sharded(lambda: Transformer(CFG, nnx.Rngs(0)), mesh)
    resharded = sampling.reshard_for_decode(trained, mesh)

    def q_kernel(p):
        return p["layers"]["attn"]["q_proj"]["kernel"][...]

    assert "fsdp" in q_kernel(trained).sharding.spec  # the training layout shards it
    assert q_kernel(resharded).sharding.spec == jax.sharding.PartitionSpec(
        None, None, "tensor")
    for leaf in jax.tree.leaves(resharded):
        assert "fsdp" not in jax.tree.leaves(tuple(leaf.sharding.spec)), leaf.sharding.spec
        assert leaf.sharding.mesh == mesh
    for a, b in zip(jax.tree.leaves(resharded), jax.tree.leaves(trained), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    tokens_BP, lengths_B = ragged(PROMPTS)
    sp = SamplingParams.create(4, temperature=0.0, max_new_tokens=[12, 20, 5, 16])
    outs = {name: sampling.generate(graphdef, p, tokens_BP, lengths_B, sp, mesh=mesh,
                                    max_len=MAX_LEN)
            for name, p in (("trained", trained), ("resharded", resharded))}
    one_device = jax.device_put(trained, jax.devices()[0])
    outs["one device"] = sampling.generate(graphdef, one_device, tokens_BP, lengths_B, sp,
                                           max_len=MAX_LEN)
    want = outs["one device"]
    np.testing.assert_array_equal(want.lengths_B, [12, 20, 5, 16])
    for name, out in outs.items():
        np.testing.assert_array_equal(out.tokens_BN, want.tokens_BN, err_msg=name)
        np.testing.assert_allclose(out.logprobs_BN, want.logprobs_BN, atol=1e-5, err_msg=name)
