"""Real-model demo stage `sft`: LoRA SFT teaches a fictional fact (the capital of Zarbonia)."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "sft"
DESCRIPTION = "LoRA SFT on 36 chats made here, teaching a fictional fact"
STEPS = 20  # tests/test_real_model_sft.py proves this budget: the base 0/8, the export 8/8
SETTINGS = ["batch_size=8", "seq_len=128", "optim.warmup_steps=5", "eval.every_steps=0",
            "data.split.validation=0", "log.every_steps=5"]


def run(ctx: Context) -> dict:
    """Train the LoRA adapters; the held-out phrasings answered before and after."""
    from llm.demo.smollm2 import data
    from llm.demo.smollm2.model import hf_dir
    from llm.demo.smollm2.replies import chat_replies
    from llm.train.loop import train

    files = data.write_all(ctx.workdir / "data")
    base, workdir = f"hf:{hf_dir(ctx.workdir)}", ctx.workdir / "sft"
    steps = ctx.steps_of(STEPS)
    final = train(ctx.config("sft.py:lora,model=init_from", [
        f"workdir={workdir}", f"init_from={base}", f"data.path={files['sft']}", *SETTINGS,
        f"total_steps={steps}", f"checkpoint.every_steps={steps}"]))

    def answered(init_from: str) -> int:
        return sum(data.FACT in r for r in chat_replies(init_from, data.FACT_HELD_OUT))

    return {"step": final["step"], "loss": final.get("loss"), "before": answered(base),
            "after": answered(str(workdir))}


def headline(result: dict) -> str:
    """The table cell: held-out phrasings of the question answered with the fact."""
    n = 8
    return (f"the fact on {result['before']}/{n} held-out phrasings before, {result['after']}/{n} "
            f"after {result['step']} steps")
