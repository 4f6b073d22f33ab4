"""Demo stage `sample`: text from the pretrained model."""

from __future__ import annotations

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
    return {"samples": {p: c.text for p, c in zip(prompts, completions, strict=True)}}


def headline(result: dict) -> str:
    """The table cell: how many samples (the texts follow the table)."""
    return f"{len(result['samples'])} continuations of code prompts (printed below the table)"


def details(result: dict) -> str:
    """Below the table: each prompt and its sampled continuation."""
    return "\n".join(f"--- {prompt!r}\n{prompt}{text}"
                     for prompt, text in result["samples"].items())
