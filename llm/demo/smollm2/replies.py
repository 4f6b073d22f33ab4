"""Chat replies of any `init_from` (hf:DIR or a LoRA workdir) through the model's own chat
template, stopping at its end of turn: what every real-model stage measures with."""

from __future__ import annotations

from collections.abc import Sequence


def chat_replies(init_from: str, questions: Sequence[str], *, seed: int = 0,
                 temperature: float = 0.0, max_new_tokens: int = 32) -> list[str]:
    """One reply per question (greedy at temperature 0, else sampled with `seed`)."""
    from llm.sampling.sampler import load_sampler

    sampler, end_ids = load_sampler(init_from)
    prompts = [sampler.chat_template([{"role": "user", "content": q}]) for q in questions]
    done = sampler.complete(prompts, stop_token_ids=end_ids, temperature=temperature,
                            max_new_tokens=max_new_tokens,
                            seed=[seed + i for i in range(len(prompts))])
    return [c.text.strip() for c in done]
