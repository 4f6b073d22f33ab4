"""Real-model demo stage `eval`: every model on all three things the stages teach, so the table
says what each stage changed and what it left alone.

- fact: held-out phrasings of the Zarbonia question answered with the fact (greedy);
- sign-off and word limit: one sampled reply (temperature 0.7, seed 0) to each of the 32
  held-out questions: the share that signs off, the word-limit reward and the mean words.
"""

from __future__ import annotations

from llm.demo.context import Context

NAME = "eval"
DESCRIPTION = "every model on the fact, the sign-off and the word limit (held-out prompts)"
TEMPERATURE = 0.7
MODELS = ("sft", "dpo", "grpo")


def measure(init_from: str) -> dict:
    """The three held-out measures of one model."""
    from llm.demo.smollm2 import data, word_limit
    from llm.demo.smollm2.replies import chat_replies

    fact = chat_replies(init_from, data.FACT_HELD_OUT)
    questions = [q for q, _ in data.HELD_OUT_QUESTIONS]
    sampled = chat_replies(init_from, questions, temperature=TEMPERATURE, max_new_tokens=48)
    rewards = word_limit.at_most_words(questions, sampled)
    return {"fact": sum(data.FACT in r for r in fact) / len(fact),
            "sign_off": sum(map(data.has_sign_off, sampled)) / len(sampled),
            "word_reward": sum(rewards) / len(rewards),
            "words": sum(len(r.split()) for r in sampled) / len(sampled)}


def run(ctx: Context) -> dict:
    """Measure the imported model and each stage's model that exists in the workdir."""
    from llm.demo.smollm2.model import hf_dir

    rows = {"base": measure(f"hf:{hf_dir(ctx.workdir)}")}
    for name in MODELS:
        if (ctx.workdir / name / "checkpoints").is_dir():
            rows[name] = measure(str(ctx.workdir / name))
    return {"rows": rows}


def headline(result: dict) -> str:
    """The table cell: which models were measured (the table follows below)."""
    return f"{len(result['rows'])} models on held-out prompts (table below)"


def details(result: dict) -> str:
    """Below the table: one row per model."""
    lines = ["| model | fact (8 phrasings) | signs off | word-limit reward | mean words |",
             "|---|---|---|---|---|"]
    for name, m in result["rows"].items():
        lines.append(f"| {name} | {m['fact']:.0%} | {m['sign_off']:.0%} | "
                     f"{m['word_reward']:.2f} | {m['words']:.1f} |")
    return "\n".join(lines)
