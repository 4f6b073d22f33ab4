"""Log-likelihoods of (context, continuation) token pairs, each context scored once.

`encode_pair` splits text as lm-evaluation-harness does: trailing spaces of the context move
to the continuation, the whole text is encoded, and the continuation is what follows the
context's own encoding (so a merge across the boundary is scored as the tokens the whole
text has). `Scorer.loglikelihood` then groups the requests by context, longest first, and
scores a batch of them in two jitted programs: `_prefill` writes one fixed-length chunk of
every context into a KV cache (right-padded, slot = position), called once per chunk the
batch's longest context reaches, so short contexts are not padded to the longest of the
call; `_score` then scores every continuation against a copy of its context's cache, so the
4 choices of a question pay for their shared context once. The first continuation token is
scored from the context's last hidden state; the others from the continuation pass.

A pair longer than `max_len + 1` tokens keeps its last `max_len + 1` (the context is cut
from the left, then the continuation's head when it alone is too long), as lm-eval does; the
cuts are counted in `Scorer.truncated`.

Shapes: C contexts, B continuation rows, L prefill chunk, P context bucket, T continuation
bucket, S = P + T cache slots, V vocabulary. P and T are the powers of two at or above the
longest context and continuation of the whole call, L = min(prefill_chunk, P), B is
`batch_size` and C a power of two, so a call compiles one pair of programs per distinct C
(one pair, when every batch holds as many contexts).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm import model as model_lib
from llm import sharding

Pair = tuple[list[int], list[int]]  # (context ids, continuation ids)


def encode_pair(encode: Callable[[str], list[int]], context: str, continuation: str
                ) -> Pair:
    """(context ids, continuation ids) of a text pair, split the way lm-eval splits it;
    `encode` adds the BOS the model expects. An empty context is the BOS alone."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = encode(context)
    whole_ids = encode(context + continuation)
    return context_ids, whole_ids[len(context_ids):]


def bucket(n: int) -> int:
    """Padded size: the next power of two (a few compiled shapes for any workload)."""
    return 1 << (max(n, 1) - 1).bit_length()


@dataclasses.dataclass
class Truncated:
    """How many requests lost tokens to the context window."""

    context: int = 0  # the context was cut from the left
    continuation: int = 0  # the continuation alone was too long: its head was cut too


def truncate(pair: Pair, max_len: int, counts: Truncated | None = None) -> Pair:
    """The pair's last `max_len + 1` tokens as (context, continuation), counted in `counts`."""
    context, continuation = pair
    if not continuation:
        raise ValueError("a continuation must have at least one token")
    if len(context) + len(continuation) <= max_len + 1:
        return list(context), list(continuation)
    if counts is not None:
        counts.context += 1
    if len(continuation) <= max_len:
        keep = max_len + 1 - len(continuation)
        return list(context[-keep:]), list(continuation)
    if counts is not None:
        counts.continuation += 1
    window = continuation[-(max_len + 1):]
    return window[:1], window[1:]


@partial(jax.jit, static_argnames=("graphdef",), donate_argnames=("cache", "last_CD"))
def _prefill(graphdef: nnx.GraphDef, params: Any, cache: list, last_CD: jax.Array,
             chunk_CL: jax.Array, offset: jax.Array, context_len_C: jax.Array
             ) -> tuple[list, jax.Array]:
    """Write one chunk of every context (positions offset .. offset + L - 1) into the cache,
    keeping the final hidden state of each context whose last token falls in the chunk."""
    model = nnx.merge(graphdef, params)
    C, L = chunk_CL.shape
    positions_CL = offset + jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32)[None], (C, L))
    h_CLD, cache = model.hidden(chunk_CL, positions_CL, cache=cache)
    last_C = context_len_C - 1 - offset
    here_C = (last_C >= 0) & (last_C < L)
    h_CD = jnp.take_along_axis(h_CLD, jnp.clip(last_C, 0, L - 1)[:, None, None], 1)[:, 0]
    return cache, jnp.where(here_C[:, None], h_CD.astype(last_CD.dtype), last_CD)


@partial(jax.jit, static_argnames=("graphdef",))
def _score(graphdef: nnx.GraphDef, params: Any, cache: list, last_CD: jax.Array,
           context_len_C: jax.Array, cont_BT: jax.Array, cont_len_B: jax.Array,
           group_B: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum of continuation log-probs, all-greedy flag) per continuation row."""
    model = nnx.merge(graphdef, params)
    B, T = cont_BT.shape
    last_CV = model.logits(last_CD)  # only each context's last position needs the LM head
    cache_B = jax.tree.map(lambda x: x[group_B], cache)  # each row's copy of its context
    positions_BT = context_len_C[group_B][:, None] + jnp.arange(T, dtype=jnp.int32)[None]
    logits_BTV, _ = model(cont_BT, positions_BT, cache=cache_B)
    # token j is predicted by the context's last logits (j = 0) or by token j - 1
    pred_BTV = jnp.concatenate([last_CV[group_B][:, None], logits_BTV[:, :-1]], axis=1)
    logp_BTV = jax.nn.log_softmax(pred_BTV.astype(jnp.float32), axis=-1)
    token_logp_BT = jnp.take_along_axis(logp_BTV, cont_BT[..., None], -1)[..., 0]
    valid_BT = jnp.arange(T)[None] < cont_len_B[:, None]
    greedy_BT = (jnp.argmax(pred_BTV, -1) == cont_BT) | ~valid_BT
    return jnp.sum(jnp.where(valid_BT, token_logp_BT, 0.0), 1), jnp.all(greedy_BT, 1)


class Scorer:
    """Batched, sharded log-likelihood scoring on a split model (graphdef, params)."""

    def __init__(self, graphdef: nnx.GraphDef, params: Any, *, max_len: int | None = None,
                 batch_size: int = 32, mesh: jax.sharding.Mesh | None = None,
                 prefill_chunk: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected >= 1")
        if prefill_chunk < 1 or prefill_chunk & (prefill_chunk - 1):
            raise ValueError(f"prefill_chunk={prefill_chunk}: expected a power of two")
        self.prefill_chunk = prefill_chunk
        self.graphdef, self.params, self.mesh = graphdef, params, mesh
        self.cfg = nnx.merge(graphdef, params).cfg
        self.max_len = int(max_len or self.cfg.max_seq_len)
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len}: expected >= 1")
        self.batch_size = batch_size
        self.truncated = Truncated()

    def loglikelihood(self, pairs: Sequence[Pair], progress: Callable[[int], None] | None = None
                      ) -> list[tuple[float, bool]]:
        """(sum of continuation log-probs, whether every token is the argmax) per pair, in
        the order given; `progress(n)` is told of each n requests done."""
        pairs = [truncate(p, self.max_len, self.truncated) for p in pairs]
        self._check_ids(pairs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, (context, _) in enumerate(pairs):
            groups.setdefault(tuple(context), []).append(i)
        # longest first, so that rows of similar length share a padded batch
        order = sorted(groups.items(), key=lambda g: -len(g[0]) - max(
            len(pairs[i][1]) for i in g[1]))
        results: list[tuple[float, bool] | None] = [None] * len(pairs)
        # one padded length per call (not per batch), so a call compiles few programs
        P = bucket(max(len(context) for context, _ in pairs)) if pairs else 1
        T = bucket(max(len(continuation) for _, continuation in pairs)) if pairs else 1
        for chunk in self._chunks(order):
            for i, value in zip([i for _, rows in chunk for i in rows],
                                self._score_chunk(chunk, pairs, P, T), strict=True):
                results[i] = value
            if progress is not None:
                progress(sum(len(rows) for _, rows in chunk))
        return results  # type: ignore[return-value]

    def _check_ids(self, pairs: Sequence[Pair]) -> None:
        vocab = self.cfg.vocab_size
        for n, (context, continuation) in enumerate(pairs):
            if not context:
                raise ValueError(f"request {n}: empty context (encode adds BOS; give one "
                                 "token at least)")
            if any(not 0 <= t < vocab for t in (*context, *continuation)):
                raise ValueError(f"request {n}: token ids must lie in [0, {vocab})")

    def _chunks(self, order: list) -> list[list]:
        """Groups packed into calls of at most `batch_size` continuations (a larger group is
        split; its context is then scored once per piece)."""
        chunks, current, size = [], [], 0
        for context, rows in order:
            for start in range(0, len(rows), self.batch_size):
                piece = rows[start:start + self.batch_size]
                if size + len(piece) > self.batch_size:
                    chunks.append(current)
                    current, size = [], 0
                current.append((context, piece))
                size += len(piece)
        if current:
            chunks.append(current)
        return chunks

    def _score_chunk(self, chunk: list, pairs: Sequence[Pair], P: int, T: int
                     ) -> list[tuple[float, bool]]:
        """Score one batch padded to contexts [C, P] and continuation rows [B, T]."""
        C = min(bucket(len(chunk)), bucket(self.batch_size))
        rows = [(g, i) for g, (_, members) in enumerate(chunk) for i in members]
        B = self.batch_size  # fixed: every batch of a call shares one program
        context_CP = np.zeros((C, P), np.int32)
        context_len_C = np.ones(C, np.int32)
        for g, (context, _) in enumerate(chunk):
            context_CP[g, :len(context)] = context
            context_len_C[g] = len(context)
        cont_BT = np.zeros((B, T), np.int32)
        cont_len_B = np.zeros(B, np.int32)
        group_B = np.zeros(B, np.int32)
        for b, (g, i) in enumerate(rows):
            continuation = pairs[i][1]
            cont_BT[b, :len(continuation)] = continuation
            cont_len_B[b], group_B[b] = len(continuation), g
        L = min(self.prefill_chunk, P)  # P is a power of two, so L divides it
        cache = model_lib.init_cache(self.cfg, C, P + T)  # the compute dtype, as decoding
        last_CD = jnp.zeros((C, self.cfg.d_model), self.cfg.compute_dtype)
        context_len_C, cont_BT, cont_len_B, group_B, cache, last_CD = self._place(
            context_len_C, cont_BT, cont_len_B, group_B, cache, last_CD)
        # only the chunks this batch's longest context reaches: batches are sorted by length
        for offset in range(0, max(len(c) for c, _ in chunk), L):
            (chunk_CL,) = self._place(context_CP[:, offset:offset + L])
            cache, last_CD = _prefill(self.graphdef, self.params, cache, last_CD, chunk_CL,
                                      np.int32(offset), context_len_C)
        logp_B, greedy_B = jax.device_get(_score(self.graphdef, self.params, cache, last_CD,
                                                 context_len_C, cont_BT, cont_len_B, group_B))
        return [(float(logp_B[b]), bool(greedy_B[b])) for b in range(len(rows))]

    def _place(self, *trees: Any) -> tuple:
        """Each array sharded by rows over the mesh (as they are, without one)."""
        if self.mesh is None:
            return trees
        return tuple(jax.tree.map(
            lambda x: jax.device_put(x, sharding.rows_sharding(self.mesh, x.shape)), tree)
            for tree in trees)


def rolling_windows(tokens: Sequence[int], prefix_id: int, max_len: int) -> list[Pair]:
    """A text's tokens as disjoint windows of up to `max_len` predicted tokens, as lm-eval's
    rolling log-likelihood makes them: the first predicts from the prefix id; each later one
    is conditioned on the tokens before it that still fit in `max_len` (one, for a full
    window; more, for a short last window)."""
    tokens = list(tokens)
    if not tokens:
        return []
    first = min(max_len, len(tokens))
    windows = [([prefix_id], tokens[:first])]
    predicted = first
    while predicted < len(tokens):
        n = min(len(tokens) - predicted, max_len)
        end = predicted + n
        inputs = tokens[end - max_len - 1:end - 1]
        windows.append((inputs[:len(inputs) - (n - 1)], tokens[end - n:end]))
        predicted = end
    return windows
