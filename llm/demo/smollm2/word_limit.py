"""A reward module of a user's own, as `rl.reward_modules=llm.demo.smollm2.word_limit` loads
it: TRL's signature `f(prompts, completions, **row_fields) -> list[float]`."""

from __future__ import annotations

MAX_WORDS = 8


def at_most_words(prompts, completions, **row_fields) -> list[float]:
    """1 for a reply of 1 to MAX_WORDS words; past that, 1 less per 4 words over (floor -1);
    an empty reply scores 0, so silence is not the way to be brief."""
    out = []
    for completion in completions:
        n = len(completion.split())
        out.append(0.0 if n == 0 else 1.0 if n <= MAX_WORDS
                   else max(-1.0, 1.0 - (n - MAX_WORDS) / 4))
    return out
