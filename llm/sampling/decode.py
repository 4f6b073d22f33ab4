"""Jit-compiled sampling: one prefill pass, then `lax.while_loop`s of cached decode steps.

The sampler runs the training model's own forward (`nnx.merge(graphdef, params)` inside
jit, parameters passed as arguments, never closed over) with a preallocated KV cache.
Ragged prompts are right-padded; row b's prompt occupies positions [0, len_b) and its i-th
new token is written at cache slot len_b + i, overwriting the pad garbage that prefill left
there (attention only sees slots <= the query's position, so padding is never attended).

Decode runs in one jitted call as up to three consecutive while loops, one per cache
window (`decode_windows`: a quarter, a half, then all of the cache): while every running
row's position fits the window, attention reads only those slots, so early steps skip the
cache's empty tail. One loop with a `lax.switch` per step measured 40% slower on CPU.

Compile key: (graphdef, batch, prompt bucket, max_len, mesh, unstack_layers, eos/stop-id slots
(8 a block)). Prompt lengths are bucketed (powers of two from 8 up to 64, then multiples of
64); every sampling control is an array in `SamplingParams`, so changing it never
recompiles.

`generate` is the one-call host API (returns numpy). `prefill` + `decode` expose the same
steps on device arrays: `decode(..., max_steps=n)` runs at most n steps and can be called
again on the returned state (chunked streaming carries the cache between calls).

Shapes: B batch, P prompt bucket, N output slots, S cache length, V (padded) vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llm import model as model_lib
from llm import sharding as sharding_lib
from llm.sampling.filters import SamplingParams, choose_tokens, row_keys, temperature_logprobs

__all__ = ["SamplingParams", "GenerateOutput", "DecodeState", "generate", "prefill", "decode",
           "bucket_length", "decode_windows", "FINISH_REASONS", "finish_reasons",
           "reshard_for_decode", "check_ids", "generate_traced", "pad_ids"]

# finish codes stored on device; index into FINISH_REASONS on the host.
RUNNING, EOS, STOP, LENGTH = 0, 1, 2, 3
FINISH_REASONS = ("running", "eos", "stop", "length")
ID_SLOTS = 8  # eos / stop id arrays are padded to a multiple of this (compile key)


class GenerateOutput(NamedTuple):
    """Host results; row b's new tokens are tokens_BN[b, :lengths_B[b]] (incl. eos/stop id)."""

    tokens_BN: np.ndarray  # int32, zero past each row's length
    logprobs_BN: np.ndarray  # float32, log p(token) under the unmodified model
    sampling_logprobs_BN: np.ndarray  # float32, under the filtered sampling distribution
    lengths_B: np.ndarray  # int32, number of new tokens
    finish_reason: list[str]  # 'eos' | 'stop' | 'length' per row
    # float32, log softmax(logits / temperature) before penalties and filters (TRL's
    # recorded log-probs); None where a caller (beam search) does not record them
    scaled_logprobs_BN: np.ndarray | None = None


class DecodeState(NamedTuple):
    """Everything the decode loop carries (a pytree of device arrays)."""

    cache: Any
    tokens_BN: jax.Array
    logprobs_BN: jax.Array
    sampling_logprobs_BN: jax.Array
    scaled_logprobs_BN: jax.Array
    prompt_lengths_B: jax.Array
    n_new_B: jax.Array
    done_B: jax.Array
    finish_B: jax.Array
    last_token_B: jax.Array
    prompt_seen_BV: jax.Array
    counts_BV: jax.Array
    sampling: SamplingParams
    eos_ids: jax.Array
    stop_ids: jax.Array
    steps: jax.Array  # decode-loop iterations run so far (prefill not counted)


def bucket_length(n: int) -> int:
    """Prompt-length bucket: the next power of two (at least 8) up to 64, then the next
    multiple of 64."""
    if n <= 64:
        return max(8, 1 << (max(n, 1) - 1).bit_length())
    return -(-n // 64) * 64


def _cache_spec(mesh: jax.sharding.Mesh, cfg: model_lib.ModelConfig, batch: int
                ) -> PartitionSpec:
    """Per-layer cache [B, K, ., .]: batch over data/fsdp, kv heads over tensor (when they
    divide)."""
    batch_axes = sharding_lib.BATCH_AXES if batch % sharding_lib.batch_divisor(mesh) == 0 \
        else None
    kv_axis = "tensor" if cfg.n_kv_heads % mesh.shape["tensor"] == 0 else None
    return PartitionSpec(batch_axes, kv_axis, None, None)


def _constrain_cache(cache: Any, cfg: model_lib.ModelConfig, mesh: jax.sharding.Mesh | None
                     ) -> Any:
    if mesh is None:
        return cache
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh, _cache_spec(mesh, cfg, x.shape[0]))), cache)


def _record(state: DecodeState, tokens_B: jax.Array, logprobs_B: jax.Array,
            sampling_logprobs_B: jax.Array, scaled_logprobs_B: jax.Array, max_len: int
            ) -> DecodeState:
    """Write the chosen tokens of still-running rows and update their stop status."""
    B, N = state.tokens_BN.shape
    rows_B = jnp.arange(B)
    active_B = ~state.done_B
    slot_B = jnp.where(active_B, state.n_new_B, N)  # finished rows write nothing
    n_new_B = state.n_new_B + active_B
    is_eos_B = jnp.isin(tokens_B, state.eos_ids)
    is_stop_B = jnp.isin(tokens_B, state.stop_ids)
    no_room_B = (n_new_B >= state.sampling.max_new_tokens) | (
        state.prompt_lengths_B + n_new_B >= max_len)
    finish_B = jnp.where(is_eos_B, EOS, jnp.where(is_stop_B, STOP, LENGTH))
    ends_B = active_B & (is_eos_B | is_stop_B | no_room_B)
    return state._replace(
        tokens_BN=state.tokens_BN.at[rows_B, slot_B].set(tokens_B, mode="drop"),
        logprobs_BN=state.logprobs_BN.at[rows_B, slot_B].set(logprobs_B, mode="drop"),
        sampling_logprobs_BN=state.sampling_logprobs_BN.at[rows_B, slot_B].set(
            sampling_logprobs_B, mode="drop"),
        scaled_logprobs_BN=state.scaled_logprobs_BN.at[rows_B, slot_B].set(
            scaled_logprobs_B, mode="drop"),
        n_new_B=n_new_B,
        done_B=state.done_B | ends_B,
        finish_B=jnp.where(ends_B, finish_B, state.finish_B),
        last_token_B=jnp.where(active_B, tokens_B, state.last_token_B),
        counts_BV=state.counts_BV.at[rows_B, tokens_B].add(active_B.astype(jnp.int32)),
    )


def _choose_and_record(state: DecodeState, logits_BV: jax.Array, max_len: int
                       ) -> DecodeState:
    keys_B = row_keys(state.sampling.seed, state.n_new_B)
    ids = jnp.concatenate([state.eos_ids, state.stop_ids])
    tokens_B, logprobs_B, sampling_logprobs_B = choose_tokens(
        logits_BV, state.sampling, keys_B, state.prompt_seen_BV, state.counts_BV,
        state.n_new_B, ids)
    scaled_logprobs_B = temperature_logprobs(logits_BV, tokens_B, state.sampling.temperature)
    return _record(state, tokens_B, logprobs_B, sampling_logprobs_B, scaled_logprobs_B, max_len)


def prompt_logits(model: model_lib.Transformer, prompt_BP: jax.Array,
                  prompt_lengths_B: jax.Array, cache: Any) -> tuple[jax.Array, Any]:
    """One pass over right-padded prompts: next-token logits_BV at each row's last token."""
    B, P = prompt_BP.shape
    positions_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32)[None], (B, P))
    h_BPD, cache = model.hidden(prompt_BP, positions_BP, cache=cache)
    h_B1D = jnp.take_along_axis(h_BPD, (prompt_lengths_B - 1)[:, None, None], axis=1)
    return model.logits(h_B1D)[:, 0], cache  # the LM head runs on B rows, not B * P


@partial(jax.jit, static_argnames=("graphdef", "max_len", "mesh"))
def _prefill(graphdef: nnx.GraphDef, params: Any, prompt_BP: jax.Array,
             prompt_lengths_B: jax.Array, sampling: SamplingParams, eos_ids: jax.Array,
             stop_ids: jax.Array, *, max_len: int, mesh: jax.sharding.Mesh | None
             ) -> DecodeState:
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    B, P = prompt_BP.shape
    V = cfg.padded_vocab
    num_slots = max_len  # output slots; a row never outgrows the cache (trimmed on the host)
    cache = _constrain_cache(model_lib.init_cache(cfg, B, max_len), cfg, mesh)
    logits_BV, cache = prompt_logits(model, prompt_BP, prompt_lengths_B, cache)
    positions_BP = jnp.broadcast_to(jnp.arange(P, dtype=jnp.int32)[None], (B, P))
    in_prompt_BP = positions_BP < prompt_lengths_B[:, None]
    rows_B1 = jnp.arange(B)[:, None]
    prompt_seen_BV = jnp.zeros((B, V), bool).at[
        rows_B1, jnp.where(in_prompt_BP, prompt_BP, V)].set(True, mode="drop")
    state = DecodeState(
        cache=_constrain_cache(cache, cfg, mesh),
        tokens_BN=jnp.zeros((B, num_slots), jnp.int32),
        logprobs_BN=jnp.zeros((B, num_slots), jnp.float32),
        sampling_logprobs_BN=jnp.zeros((B, num_slots), jnp.float32),
        scaled_logprobs_BN=jnp.zeros((B, num_slots), jnp.float32),
        prompt_lengths_B=prompt_lengths_B,
        n_new_B=jnp.zeros((B,), jnp.int32),
        done_B=jnp.zeros((B,), bool),
        finish_B=jnp.zeros((B,), jnp.int32),
        last_token_B=jnp.zeros((B,), jnp.int32),
        prompt_seen_BV=prompt_seen_BV,
        counts_BV=jnp.zeros((B, V), jnp.int32),
        sampling=sampling, eos_ids=eos_ids, stop_ids=stop_ids,
        steps=jnp.zeros((), jnp.int32))
    return _choose_and_record(state, logits_BV, max_len)


@partial(jax.jit, static_argnames=("graphdef", "max_len", "mesh", "unstack_layers"),
         donate_argnums=(2,))
def _decode(graphdef: nnx.GraphDef, params: Any, state: DecodeState, max_steps: jax.Array,
            *, max_len: int, mesh: jax.sharding.Mesh | None, unstack_layers: bool
            ) -> DecodeState:
    model = nnx.merge(graphdef, params)
    cfg = model.cfg
    if unstack_layers:
        # Loop-invariant per-layer weights: XLA:CPU would otherwise copy each layer's slice
        # of the scan-stacked weights on every step (costing more than the step's matmuls).
        model.unstack_layers()

    def next_positions_B(state: DecodeState) -> jax.Array:
        return state.prompt_lengths_B + state.n_new_B - 1  # each row's last token

    def loop(window: int, carry: tuple[DecodeState, jax.Array]) -> tuple:
        """Decode while every running row's next position lies inside the first `window`
        cache slots; attention then reads only those slots."""
        def cond(carry):
            state, steps = carry
            inside_B = (next_positions_B(state) < window) | state.done_B
            return jnp.logical_not(jnp.all(state.done_B)) & (steps < max_steps) & jnp.all(
                inside_B)

        def body(carry):
            state, steps = carry
            logits_B1V, cache = model(state.last_token_B[:, None],
                                      next_positions_B(state)[:, None], cache=state.cache,
                                      kv_window=window)
            state = state._replace(cache=_constrain_cache(cache, cfg, mesh),
                                   steps=state.steps + 1)
            return _choose_and_record(state, logits_B1V[:, 0], max_len), steps + 1

        return jax.lax.while_loop(cond, body, carry)

    carry = (state, jnp.zeros((), jnp.int32))
    for window in decode_windows(max_len):
        carry = loop(window, carry)
    return carry[0]


def generate_traced(graphdef: nnx.GraphDef, params: Any, prompt_BP: jax.Array,
                    prompt_lengths_B: jax.Array, sampling: SamplingParams, eos_ids: jax.Array,
                    stop_ids: jax.Array, *, max_len: int, mesh: jax.sharding.Mesh | None,
                    unstack_layers: bool) -> DecodeState:
    """Prefill and decode to the end inside a caller's jit (RL rollouts); the caller
    validates inputs and fixes the prompt width P and max_len, so shapes never change."""
    state = _prefill(graphdef, params, prompt_BP, prompt_lengths_B, sampling, eos_ids,
                     stop_ids, max_len=max_len, mesh=mesh)
    return _decode(graphdef, params, state, jnp.asarray(2**30, jnp.int32), max_len=max_len,
                   mesh=mesh, unstack_layers=unstack_layers)


def decode_windows(max_len: int) -> list[int]:
    """Cache prefixes the decode loop attends over as rows grow: a quarter, a half, then all
    of the cache (rounded up to multiples of 64), so early steps skip the empty slots."""
    return sorted({min(max_len, -(-max_len * n // 4 // 64) * 64) for n in (1, 2, 4)})


def check_ids(name: str, ids: Sequence[int] | None, vocab_size: int) -> None:
    """Raise one ValueError unless every id lies in [0, vocab_size) (e.g. eos_ids)."""
    bad = [i for i in (ids or ()) if not 0 <= int(i) < vocab_size]
    if bad:
        raise ValueError(f"{name}={list(ids)}: expected ids in [0, {vocab_size}); "
                         f"out of range: {bad}")


def pad_ids(ids: Sequence[int] | None) -> np.ndarray:
    """Token ids padded with -1 to a multiple of ID_SLOTS (so few ids share one compile)."""
    ids = [int(i) for i in (ids or ())]
    size = max(ID_SLOTS, -(-len(ids) // ID_SLOTS) * ID_SLOTS)
    return np.array(ids + [-1] * (size - len(ids)), np.int32)


def validate_request(cfg: model_lib.ModelConfig, prompt_BP: np.ndarray, lengths_B: np.ndarray,
                  sampling: SamplingParams, max_len: int | None) -> int:
    """Validate prompts and lengths on the host; return the cache length to use."""
    if prompt_BP.ndim != 2 or lengths_B.shape != prompt_BP.shape[:1]:
        raise ValueError(f"prompt_tokens_BP must be [B, P] with prompt_lengths_B [B]; got "
                         f"{prompt_BP.shape} and {lengths_B.shape}")
    B = prompt_BP.shape[0]
    if np.asarray(sampling.temperature).shape != (B,):
        raise ValueError(f"sampling has {np.asarray(sampling.temperature).shape} rows; "
                         f"expected {B} (use SamplingParams.create({B}, ...))")
    if np.any(lengths_B <= 0):
        raise ValueError(f"empty prompt in rows {np.flatnonzero(lengths_B <= 0).tolist()}: "
                         "every row needs at least one token (e.g. BOS)")
    if np.any(lengths_B > prompt_BP.shape[1]):
        raise ValueError("prompt_lengths_B exceeds the prompt array's width")
    valid_BP = np.arange(prompt_BP.shape[1])[None] < lengths_B[:, None]
    if np.any(valid_BP & ((prompt_BP < 0) | (prompt_BP >= cfg.vocab_size))):
        raise ValueError(f"prompt token ids must lie in [0, {cfg.vocab_size})")
    needed = int(np.max(lengths_B + np.asarray(sampling.max_new_tokens)))
    if max_len is not None and max_len <= int(lengths_B.max()):
        raise ValueError(f"max_len={max_len}: expected more than the longest prompt "
                         f"({int(lengths_B.max())} tokens), to leave room for new tokens")
    if max_len is None:
        max_len = min(cfg.max_seq_len, -(-needed // 64) * 64)
    if max_len > cfg.max_seq_len:
        raise ValueError(f"max_len={max_len} exceeds the model's context "
                         f"max_seq_len={cfg.max_seq_len}")
    sampling.validate()
    max_new_B = np.broadcast_to(np.asarray(sampling.max_new_tokens), lengths_B.shape)
    over = np.flatnonzero(lengths_B + max_new_B > max_len)
    if len(over):
        b = int(over[0])
        raise ValueError(f"row {b}: prompt of {int(lengths_B[b])} tokens does not fit the "
                         f"context of {max_len} with max_new_tokens {int(max_new_B[b])}"
                         + (f" (and {len(over) - 1} more rows)" if len(over) > 1 else ""))
    return max_len


def finish_reasons(finish_B: np.ndarray) -> list[str]:
    """Device finish codes → 'eos' | 'stop' | 'length' (or 'running')."""
    return [FINISH_REASONS[int(c)] for c in np.asarray(finish_B)]


def prefill(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BP: Any, prompt_lengths_B: Any,
            sampling: SamplingParams, *, max_len: int | None = None,
            eos_ids: Sequence[int] = (), stop_token_ids: Sequence[int] = (),
            mesh: jax.sharding.Mesh | None = None) -> tuple[DecodeState, int]:
    """Validate, bucket and prefill; returns (state holding the first new token, max_len)."""
    cfg = model_config(graphdef, params)
    prompt_BP = np.asarray(prompt_tokens_BP, np.int32)
    lengths_B = np.asarray(prompt_lengths_B, np.int32)
    max_len = validate_request(cfg, prompt_BP, lengths_B, sampling, max_len)
    check_ids("eos_ids", eos_ids, cfg.vocab_size)
    check_ids("stop_token_ids", stop_token_ids, cfg.vocab_size)
    P = min(bucket_length(int(lengths_B.max())), max_len)
    padded_BP = np.zeros((prompt_BP.shape[0], P), np.int32)
    width = min(P, prompt_BP.shape[1])
    padded_BP[:, :width] = prompt_BP[:, :width]
    inputs = (padded_BP, lengths_B, SamplingParams(*map(np.asarray, sampling)))
    if mesh is not None:
        B = prompt_BP.shape[0]
        spec = sharding_lib.BATCH_AXES if B % sharding_lib.batch_divisor(mesh) == 0 else None
        inputs = jax.tree.map(lambda x: jax.device_put(x, NamedSharding(
            mesh, PartitionSpec(spec, *([None] * (x.ndim - 1))))), inputs)
    state = _prefill(graphdef, params, *inputs, pad_ids(eos_ids), pad_ids(stop_token_ids),
                     max_len=max_len, mesh=mesh)
    return state, max_len


def decode(graphdef: nnx.GraphDef, params: Any, state: DecodeState, *, max_len: int,
           max_steps: int = 2**30, mesh: jax.sharding.Mesh | None = None,
           unstack_layers: bool = True) -> DecodeState:
    """Run up to `max_steps` decode steps (fewer when every row stops); donates `state`.

    `unstack_layers` slices scan-stacked layer weights once per call, before the loop
    (faster; one extra copy of the layer weights while the call runs); False slices them
    inside every step instead (no extra copy held).
    """
    return _decode(graphdef, params, state, jnp.asarray(max_steps, jnp.int32),
                   max_len=max_len, mesh=mesh, unstack_layers=unstack_layers)


def to_output(state: DecodeState) -> GenerateOutput:
    """Copy a decode state's results to the host, N = the largest max_new_tokens."""
    tokens_BN, logprobs_BN, slp_BN, scaled_BN, n_B, finish_B, max_new_B = jax.device_get(
        (state.tokens_BN, state.logprobs_BN, state.sampling_logprobs_BN,
         state.scaled_logprobs_BN, state.n_new_B, state.finish_B,
         state.sampling.max_new_tokens))
    N = int(np.max(max_new_B))
    return GenerateOutput(np.asarray(tokens_BN)[:, :N], np.asarray(logprobs_BN)[:, :N],
                          np.asarray(slp_BN)[:, :N], np.asarray(n_B), finish_reasons(finish_B),
                          np.asarray(scaled_BN)[:, :N])


def generate(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BP: Any, prompt_lengths_B: Any,
             sampling: SamplingParams, *, max_len: int | None = None,
             eos_ids: Sequence[int] = (), stop_token_ids: Sequence[int] = (),
             mesh: jax.sharding.Mesh | None = None, unstack_layers: bool = True
             ) -> GenerateOutput:
    """Sample continuations of right-padded prompts until every row stops (one call).

    `max_len` is the cache length (prompt + new tokens), at most the model's max_seq_len;
    by default the smallest multiple of 64 that fits every row. A row stops at one of
    `eos_ids` (finish 'eos'), one of `stop_token_ids` ('stop') or at its max_new_tokens /
    the cache end ('length'); the stopping id is included in its tokens. `unstack_layers`:
    see `decode`.
    """
    state, max_len = prefill(graphdef, params, prompt_tokens_BP, prompt_lengths_B, sampling,
                             max_len=max_len, eos_ids=eos_ids, stop_token_ids=stop_token_ids,
                             mesh=mesh)
    state = decode(graphdef, params, state, max_len=max_len, mesh=mesh,
                   unstack_layers=unstack_layers)
    return to_output(state)


def model_config(graphdef: nnx.GraphDef, params: Any) -> model_lib.ModelConfig:
    """The ModelConfig of a split Transformer (merging only wraps the arrays, no copy)."""
    return nnx.merge(graphdef, params).cfg


def reshard_for_decode(params: Any, mesh: jax.sharding.Mesh) -> Any:
    """Tensor-parallel-only copy of training-sharded params (weights replicated over fsdp).

    Saves decode's per-step all-gather of FSDP shards, for accelerators (on one CPU host,
    tensor parallelism over two CPU devices measured slower than one device); memory per device
    grows from |params| / (fsdp * tensor) to |params| / tensor, and the copy coexists with
    the original.
    """
    rules = dict(sharding_lib.DEFAULT_RULES, embed=None)
    return sharding_lib.shard_state(params, mesh, rules)
