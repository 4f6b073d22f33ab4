"""Beam search on the training model: one prefill, then a `lax.while_loop` over W beams a row.

Beams are scored by the sum of model log-probs (optionally divided by length**alpha at the
end). A finished beam (it emitted an EOS id or reached max_new_tokens) keeps its score and
competes unchanged. Width 1 is greedy decoding; with W >= V**(N-1) the search is exhaustive.

Shapes: B batch, W beams, N new tokens, V (padded) vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm import model as model_lib
from llm.sampling import decode as sampling


class BeamOutput(NamedTuple):
    """The best beam per row (host arrays); row b's tokens are tokens_BN[b, :lengths_B[b]]."""

    tokens_BN: np.ndarray
    logprobs_BN: np.ndarray  # per-token model log-probs of the chosen beam
    scores_B: np.ndarray  # sum of log-probs / length**length_penalty
    lengths_B: np.ndarray
    finish_reason: list[str]  # 'eos' | 'length'


@partial(jax.jit, static_argnames=("graphdef", "beam_width", "max_len", "num_slots",
                                   "unstack_layers"))
def _beam_search(graphdef: nnx.GraphDef, params: Any, prompt_BP: jax.Array,
                 prompt_lengths_B: jax.Array, max_new: jax.Array, eos_ids: jax.Array,
                 length_penalty: jax.Array, *, beam_width: int, max_len: int,
                 num_slots: int, unstack_layers: bool) -> tuple[jax.Array, ...]:
    model = nnx.merge(graphdef, params)
    if unstack_layers:  # slice stacked weights once, not on every step (sampling.decode)
        model.unstack_layers()
    cfg = model.cfg
    B, W, V, N = prompt_BP.shape[0], beam_width, cfg.padded_vocab, num_slots
    real_V = jnp.arange(V) < cfg.vocab_size

    def log_probs(logits_XV):
        return jnp.where(real_V, jax.nn.log_softmax(logits_XV, axis=-1), -jnp.inf)

    logits_BV, cache = sampling.prompt_logits(
        model, prompt_BP, prompt_lengths_B, model_lib.init_cache(cfg, B, max_len))
    cache = jax.tree.map(lambda x: jnp.repeat(x, W, axis=0), cache)
    logp_BWV = jnp.repeat(log_probs(logits_BV)[:, None], W, axis=1)
    lengths_BW = jnp.repeat(prompt_lengths_B[:, None], W, axis=1)
    # Only beam 0 is live at first, so the W beams start distinct.
    scores_BW = jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf)[None].repeat(B, 0)
    done_BW = jnp.zeros((B, W), bool)
    eos_BW = jnp.zeros((B, W), bool)
    tokens_BWN = jnp.zeros((B, W, N), jnp.int32)
    token_logp_BWN = jnp.zeros((B, W, N), jnp.float32)
    n_BW = jnp.zeros((B, W), jnp.int32)
    carry_V = jnp.where(jnp.arange(V) == 0, 0.0, -jnp.inf)  # a finished beam's only move

    def cond(c):
        step, _, _, _, done_BW, *_ = c
        return (step < max_new) & ~jnp.all(done_BW)

    def body(c):
        step, cache, logp_BWV, scores_BW, done_BW, eos_BW, tokens_BWN, token_logp_BWN, n_BW = c
        moves_BWV = jnp.where(done_BW[..., None], carry_V, logp_BWV)
        flat_BX = (scores_BW[..., None] + moves_BWV).reshape(B, W * V)
        scores_BW, index_BW = jax.lax.top_k(flat_BX, W)
        parent_BW, token_BW = index_BW // V, (index_BW % V).astype(jnp.int32)
        take = lambda x: jnp.take_along_axis(x, parent_BW.reshape(
            (B, W) + (1,) * (x.ndim - 2)), axis=1)
        was_done_BW, eos_BW, n_BW = take(done_BW), take(eos_BW), take(n_BW)
        tokens_BWN, token_logp_BWN = take(tokens_BWN), take(token_logp_BWN)
        chosen_logp_BW = jnp.take_along_axis(take(logp_BWV), token_BW[..., None], -1)[..., 0]
        slot_BW = jnp.where(was_done_BW, N, n_BW)
        rows_B1, beams_1W = jnp.arange(B)[:, None], jnp.arange(W)[None]
        tokens_BWN = tokens_BWN.at[rows_B1, beams_1W, slot_BW].set(token_BW, mode="drop")
        token_logp_BWN = token_logp_BWN.at[rows_B1, beams_1W, slot_BW].set(
            chosen_logp_BW, mode="drop")
        n_BW = n_BW + ~was_done_BW
        hit_eos_BW = ~was_done_BW & jnp.isin(token_BW, eos_ids)
        eos_BW = eos_BW | hit_eos_BW
        done_BW = was_done_BW | hit_eos_BW | (n_BW >= max_new)
        flat_parent = (rows_B1 * W + parent_BW).reshape(B * W)
        cache = jax.tree.map(lambda x: jnp.take(x, flat_parent, axis=0), cache)
        positions = (lengths_BW + n_BW - 1).reshape(B * W, 1)
        logits_X1V, cache = model(token_BW.reshape(B * W, 1), positions, cache=cache)
        logp_BWV = log_probs(logits_X1V[:, 0]).reshape(B, W, V)
        return (step + 1, cache, logp_BWV, scores_BW, done_BW, eos_BW, tokens_BWN,
                token_logp_BWN, n_BW)

    init = (jnp.zeros((), jnp.int32), cache, logp_BWV, scores_BW, done_BW, eos_BW,
            tokens_BWN, token_logp_BWN, n_BW)
    _, _, _, scores_BW, _, eos_BW, tokens_BWN, token_logp_BWN, n_BW = jax.lax.while_loop(
        cond, body, init)
    final_BW = scores_BW / jnp.maximum(n_BW, 1).astype(jnp.float32) ** length_penalty
    best_B = jnp.argmax(final_BW, axis=1)
    pick = lambda x: jnp.take_along_axis(x, best_B.reshape((B, 1) + (1,) * (x.ndim - 2)),
                                         axis=1)[:, 0]
    return pick(tokens_BWN), pick(token_logp_BWN), pick(final_BW), pick(n_BW), pick(eos_BW)


def beam_search(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BP: Any,
                prompt_lengths_B: Any, *, beam_width: int, max_new_tokens: int,
                max_len: int | None = None, eos_ids: Sequence[int] = (),
                length_penalty: float = 0.0, unstack_layers: bool = True) -> BeamOutput:
    """Highest-scoring continuation per row among `beam_width` beams (sum of log-probs).

    `unstack_layers`: as for `sampling.decode`.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width={beam_width}: expected >= 1")
    cfg = sampling.model_config(graphdef, params)
    prompt_BP = np.asarray(prompt_tokens_BP, np.int32)
    lengths_B = np.asarray(prompt_lengths_B, np.int32)
    dummy = sampling.SamplingParams.create(prompt_BP.shape[0], max_new_tokens=max_new_tokens)
    max_len = sampling.validate_request(cfg, prompt_BP, lengths_B, dummy, max_len)
    sampling.check_ids("eos_ids", eos_ids, cfg.vocab_size)
    P = min(sampling.bucket_length(int(lengths_B.max())), max_len)
    padded_BP = np.zeros((prompt_BP.shape[0], P), np.int32)
    padded_BP[:, :min(P, prompt_BP.shape[1])] = prompt_BP[:, :P]
    out = jax.device_get(_beam_search(
        graphdef, params, padded_BP, lengths_B, np.int32(max_new_tokens),
        sampling.pad_ids(eos_ids), np.float32(length_penalty), beam_width=beam_width,
        max_len=max_len, num_slots=max_len, unstack_layers=unstack_layers))
    tokens_BN, logprobs_BN, scores_B, lengths_B, eos_B = map(np.asarray, out)
    return BeamOutput(tokens_BN[:, :max_new_tokens], logprobs_BN[:, :max_new_tokens],
                      scores_B, lengths_B, ["eos" if e else "length" for e in eos_B])
