"""Rollouts as training rows, and the training forward's per-token log-probs on them.

A row is its prompt (right-padded in the sampler, here packed to the left) followed by its
completion: positions 0..len_r-1 hold the prompt, len_r..len_r+n_r-1 the completion, the
rest is padding (segment id 0), exactly the positions the sampler decoded at. Completion
token i of row r is predicted by the logits at position len_r + i - 1.

Shapes: R rows, P prompt width, N completion slots, T = P + N, D model width, V vocabulary.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def training_rows(prompt_RP: np.ndarray, prompt_lengths_R: np.ndarray,
                  completion_RN: np.ndarray, completion_lengths_R: np.ndarray
                  ) -> dict[str, np.ndarray]:
    """{tokens, positions, segment_ids} [R, T] and the prompt lengths [R], on the host."""
    R, P = prompt_RP.shape
    N = completion_RN.shape[1]
    t_RT = np.broadcast_to(np.arange(P + N, dtype=np.int32)[None], (R, P + N))
    len_R1 = np.asarray(prompt_lengths_R, np.int32)[:, None]
    end_R1 = len_R1 + np.asarray(completion_lengths_R, np.int32)[:, None]
    prompt_part_RT = np.take_along_axis(prompt_RP, np.minimum(t_RT, P - 1), 1)
    completion_part_RT = np.take_along_axis(completion_RN, np.clip(t_RT - len_R1, 0, N - 1), 1)
    tokens_RT = np.where(t_RT < len_R1, prompt_part_RT,
                         np.where(t_RT < end_R1, completion_part_RT, 0)).astype(np.int32)
    return {"tokens": tokens_RT, "positions": t_RT.copy(),
            "segment_ids": (t_RT < end_R1).astype(np.int32),
            "prompt_lengths": len_R1[:, 0].copy()}


def completion_mask(completion_lengths_R: np.ndarray, N: int) -> np.ndarray:
    """1.0 on each row's first completion_lengths_R[r] slots, [R, N] float32."""
    return (np.arange(N)[None] < np.asarray(completion_lengths_R)[:, None]).astype(np.float32)


def completion_logprobs(model, batch: dict, temperature: float, N: int
                        ) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [R, N] of each completion token under softmax(logits / T).

    The LM head runs on the R * N completion positions only, not on all R * T.
    """
    h_RTD, _ = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
    return token_logprobs(model, h_RTD, batch, temperature, N)


def completion_hidden(h_RTD: jax.Array, batch: dict, N: int) -> jax.Array:
    """h_RND: the hidden state at each position that predicts completion token i."""
    T = h_RTD.shape[1]
    at_RN = jnp.clip(batch["prompt_lengths"][:, None] - 1 + jnp.arange(N)[None], 0, T - 1)
    return jnp.take_along_axis(h_RTD, at_RN[..., None], axis=1)


def token_logprobs(model, h_RTD: jax.Array, batch: dict, temperature: float, N: int
                   ) -> tuple[jax.Array, jax.Array]:
    """(log-probs, entropies) [R, N] of the completion tokens from the trunk's h_RTD."""
    T = h_RTD.shape[1]
    at_RN = jnp.clip(batch["prompt_lengths"][:, None] - 1 + jnp.arange(N)[None], 0, T - 1)
    logits_RNV = model.logits(completion_hidden(h_RTD, batch, N)).astype(
        jnp.float32) / temperature
    targets_RN = jnp.take_along_axis(batch["tokens"], jnp.clip(at_RN + 1, 0, T - 1), axis=1)
    logz_RN = jax.nn.logsumexp(logits_RNV, axis=-1)
    logp_RN = jnp.take_along_axis(logits_RNV, targets_RN[..., None], -1)[..., 0] - logz_RN
    probs_RNV = jax.nn.softmax(logits_RNV, axis=-1)
    entropy_RN = logz_RN - jnp.sum(probs_RNV * jnp.where(probs_RNV > 0, logits_RNV, 0.0), -1)
    return logp_RN, entropy_RN


@partial(jax.jit, static_argnames=("graphdef", "temperature", "N"))
def reference_logprobs(graphdef: nnx.GraphDef, states: tuple, rows: dict, *,
                       temperature: float, N: int) -> jax.Array:
    """The frozen reference's per-token log-probs [R, N] of the completions."""
    return completion_logprobs(nnx.merge(graphdef, *states), rows, temperature, N)[0]
