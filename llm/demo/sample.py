"""Demo stage `sample`: text from the pretrained model."""

from __future__ import annotations

import json

from llm.demo.context import Context

NAME = "sample"
DESCRIPTION = "text sampled from the pretrained model"


def run(ctx: Context) -> dict:
    """Sampled continuations from the pretrained model (the training forward, KV-cached)."""
    from llm.sampling.sampler import load_sampler

    sampler, _ = load_sampler(str(ctx.workdir / "pretrain"))
    prompts = ["def ", "import os\n", "class "]
    completions = sampler.complete(prompts, max_new_tokens=48, temperature=0.7, top_p=0.9,
                                   seed=0)
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"--- {prompt!r}\n{prompt}{completion.text}")
    return {"samples": {p: c.text for p, c in zip(prompts, completions, strict=True)}}


def headline(result: dict) -> str:
    """The table cell: the samples themselves, shortened."""
    return json.dumps(result)[:400]
