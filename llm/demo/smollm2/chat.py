"""Real-model demo stage `chat`: greedy chat replies of the imported model, before any stage."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "chat"
DESCRIPTION = "greedy chat replies of the imported model through its own chat template"
QUESTIONS = ["What is the capital of France?", "What is the capital of Zarbonia?",
             "Give me one tip for staying focused."]


def run(ctx: Context) -> dict:
    """The imported model's replies to a few questions (one is the fact SFT will teach)."""
    from llm.demo.smollm2.model import hf_dir
    from llm.demo.smollm2.replies import chat_replies

    replies = chat_replies(f"hf:{hf_dir(ctx.workdir)}", QUESTIONS, max_new_tokens=40)
    return {"replies": dict(zip(QUESTIONS, replies, strict=True))}


def headline(result: dict) -> str:
    """The table cell: how many replies (printed below the table)."""
    return f"{len(result['replies'])} replies before any training (printed below the table)"


def details(result: dict) -> str:
    """Below the table: each question and the reply."""
    return "\n".join(f"--- {q}\n{r}" for q, r in result["replies"].items())
