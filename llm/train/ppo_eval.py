"""Held-out figures of a policy under a reward model: the mean score of its sampled answers
and the verifier's accuracy on the same answers (PPO's evaluation and outcome test)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from llm import rewards, scoring


def heldout_scores(model, tokenizer, scorer: scoring.Scorer, rows: list[dict], verifier: str,
                   max_new_tokens: int, *, samples: int = 1, temperature: float = 0.0,
                   seed: int = 0) -> tuple[float, float]:
    """(mean reward-model score, verifier accuracy) over `samples` chat completions of each
    `prompt`/`answer` row; completion j of row i is drawn with seed `seed + j * len(rows) + i`."""
    from llm.sampling.sampler import chat_sampler

    if verifier not in rewards.names():
        raise ValueError(f"ppo.eval_verifier={verifier!r}: expected one of {rewards.names()}")
    if not rows:
        return 0.0, 0.0
    graphdef, params = nnx.split(model)
    sampler, end_ids = chat_sampler(graphdef, params, tokenizer)
    questions = [str(r["prompt"]) for r in rows] * samples
    prompts = [sampler.chat_template([{"role": "user", "content": q}]) for q in questions]
    completions = sampler.complete(prompts, temperature=temperature,
                                   max_new_tokens=max_new_tokens, stop_token_ids=end_ids,
                                   seed=[seed + i for i in range(len(prompts))])
    texts = [c.text for c in completions]
    correct = rewards.score(verifier, questions, texts,
                            answer=[r["answer"] for r in rows] * samples)
    return float(np.mean(scorer.score(questions, texts))), float(np.mean(
        [c > 0 for c in correct]))
