"""Rollouts: G completions per prompt from the jitted sampler on the policy's own arrays.

`rollout` hands the optimiser's parameter arrays straight to one jitted prefill + decode
(no copy, no weight sync). Prompts arrive padded to a fixed `max_prompt_length` and the
cache length is fixed too, so every iteration reuses one compiled program; `TRACES` counts
how often it was traced. Per token the sampler records the log-prob under softmax(logits /
temperature) (what the trainer's forward computes, as TRL records it) and under the
filtered distribution actually sampled (differs only with top-k / top-p / min-p /
penalties on).

Shapes: B prompts, G generations each, R = B * G rows (a prompt's G rows consecutive),
P prompt width, N = max_new_tokens.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from functools import partial
from typing import Any

import jax
import numpy as np
from flax import nnx

from llm.sampling import decode
from llm.sampling.filters import SamplingParams

TRACES: collections.Counter = collections.Counter()  # traces of the rollout program


@dataclasses.dataclass
class Rollouts:
    """One batch of completions on the host (numpy)."""

    prompt_tokens_RP: np.ndarray
    prompt_lengths_R: np.ndarray
    completions_RN: np.ndarray  # int32, zero past each row's length (the eos id included)
    lengths_R: np.ndarray
    logprobs_RN: np.ndarray  # log softmax(logits / temperature) of each drawn token
    sampling_logprobs_RN: np.ndarray  # under the filtered distribution drawn from
    finish_reason: list[str]  # 'eos' | 'length' per row
    seconds: float

    @property
    def truncated_R(self) -> np.ndarray:
        """True where a row hit max_new_tokens before its eos."""
        return np.array([r == "length" for r in self.finish_reason])


@partial(jax.jit, static_argnames=("graphdef", "max_len", "max_new", "mesh", "unstack_layers"))
def _sample(graphdef: nnx.GraphDef, params: Any, prompt_RP: jax.Array, lengths_R: jax.Array,
            sampling: SamplingParams, eos_ids: jax.Array, stop_ids: jax.Array, *,
            max_len: int, max_new: int, mesh: Any, unstack_layers: bool) -> tuple:
    TRACES["rollout"] += 1  # runs at trace time only
    state = decode.generate_traced(graphdef, params, prompt_RP, lengths_R, sampling, eos_ids,
                                   stop_ids, max_len=max_len, mesh=mesh,
                                   unstack_layers=unstack_layers)
    return (state.tokens_BN[:, :max_new], state.scaled_logprobs_BN[:, :max_new],
            state.sampling_logprobs_BN[:, :max_new], state.n_new_B, state.finish_B)


def row_seeds(rng: jax.Array, rows: int) -> np.ndarray:
    """One sampling seed per row from `prepare`'s rng (reproducible on resume)."""
    return np.asarray(jax.random.randint(rng, (rows,), 0, np.iinfo(np.int32).max), np.int32)


def rollout(graphdef: nnx.GraphDef, params: Any, prompt_tokens_BP: np.ndarray,
            prompt_lengths_B: np.ndarray, *, num_generations: int, max_new_tokens: int,
            rng: jax.Array, eos_ids: list[int], mesh: Any = None,
            unstack_layers: bool = True, **controls: float) -> Rollouts:
    """G sampled completions of each prompt with the policy `params` (used in place).

    `controls` are `SamplingParams` fields (temperature, top_p, top_k, min_p, ...).
    The cache holds P + max_new_tokens slots, P the fixed prompt width.
    """
    start = time.perf_counter()
    prompt_RP = np.repeat(np.asarray(prompt_tokens_BP, np.int32), num_generations, axis=0)
    lengths_R = np.repeat(np.asarray(prompt_lengths_B, np.int32), num_generations)
    R, P = prompt_RP.shape
    if np.any(lengths_R < 1) or np.any(lengths_R > P):
        raise ValueError(f"prompt lengths must lie in [1, {P}]; got "
                         f"{sorted(set(lengths_R.tolist()))}")
    sampling = SamplingParams.create(R, max_new_tokens=max_new_tokens,
                                     seed=row_seeds(rng, R), **controls)
    outputs = jax.device_get(_sample(
        graphdef, params, prompt_RP, lengths_R, SamplingParams(*map(np.asarray, sampling)),
        decode.pad_ids(eos_ids), decode.pad_ids(()), max_len=P + max_new_tokens,
        max_new=max_new_tokens, mesh=mesh, unstack_layers=unstack_layers))
    tokens_RN, logprobs_RN, sampling_logprobs_RN, n_R, finish_R = map(np.asarray, outputs)
    valid_RN = np.arange(max_new_tokens)[None] < n_R[:, None]
    return Rollouts(prompt_RP, lengths_R, np.where(valid_RN, tokens_RN, 0).astype(np.int32),
                    n_R.astype(np.int32), np.where(valid_RN, logprobs_RN, 0.0),
                    np.where(valid_RN, sampling_logprobs_RN, 0.0),
                    decode.finish_reasons(finish_R), time.perf_counter() - start)


def uses_filters(controls: dict[str, float]) -> bool:
    """Whether the sampled distribution differs from softmax(logits / temperature)."""
    return (controls.get("top_k", 0) > 0 or controls.get("top_p", 1.0) < 1.0
            or controls.get("min_p", 0.0) > 0 or controls.get("repetition_penalty", 1.0) != 1.0
            or controls.get("presence_penalty", 0.0) != 0 or controls.get(
                "frequency_penalty", 0.0) != 0)


def completion_texts(tokenizer: Any, rollouts: Rollouts, eos_ids: list[int]) -> list[str]:
    """Each row's completion as text (its eos id left out)."""
    stop = set(eos_ids)
    return [tokenizer.decode([int(t) for t in rollouts.completions_RN[r, :n] if int(t) not in stop])
            for r, n in enumerate(rollouts.lengths_R)]


def prompt_texts(tokenizer: Any, rollouts: Rollouts) -> list[str]:
    """Each row's prompt as text (as the chat template rendered it)."""
    return [tokenizer.decode([int(t) for t in rollouts.prompt_tokens_RP[r, :n]])
            for r, n in enumerate(rollouts.prompt_lengths_R)]


__all__ = ["Rollouts", "rollout", "TRACES", "uses_filters", "completion_texts",
           "prompt_texts"]
