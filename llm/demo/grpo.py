"""Demo stage `grpo`: GRPO with the exact-answer verifier from the SFT model."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "grpo"
DESCRIPTION = "GRPO with the exact-answer verifier as reward, from the SFT model"
# The settings and budget tests/test_grpo_outcome.py proves on this start: 16 questions x
# G = 8 per update, lr 1e-4 after a 50-step warmup (Adam b2 0.999, configs/grpo.py), 1200
# steps (800 clear the margin in some runs only). Smaller steps learn too slowly for a CPU
# run; from 1.5e-4 up the model first loses accuracy, and from 2e-4 its completions grow past
# their EOS (docs/benchmarks.md, GRPO outcome).
STEPS = 1200
SETTINGS = ["batch_size=128", "grpo.num_generations=8", "rl.max_prompt_length=32",
            "rl.max_completion_length=16", "optim.lr=1e-4", "optim.warmup_steps=50",
            "log.every_steps=20", "rl.log_samples_every=0", "rl.reward_funcs=arithmetic"]


def run(ctx: Context) -> dict:
    """Train on the training questions' prompts; the reward's first and last logged means."""
    from llm.demo.measure import metric_rows
    from llm.train.loop import train

    steps = ctx.steps_of(STEPS)
    workdir = ctx.workdir / "grpo"
    final = train(ctx.config("grpo.py:model=tiny", [
        f"workdir={workdir}", f"init_from={ctx.workdir / 'sft'}",
        f"data.path={ctx.workdir / 'arithmetic' / 'rl.jsonl'}", *SETTINGS,
        f"total_steps={steps}", f"checkpoint.every_steps={steps}"]))
    rewards = [row["reward"] for row in metric_rows(workdir, "reward")]
    return {"step": final["step"], "reward_first": rewards[0] if rewards else None,
            "reward_last": rewards[-1] if rewards else None}


def headline(result: dict) -> str:
    """The table cell: mean training reward (verifier acceptance) first and last."""
    if result["reward_first"] is None:
        return f"already trained ({result['step']} steps)"
    return (f"training reward {result['reward_first']:.2f} → {result['reward_last']:.2f} "
            f"over {result['step']} steps (held-out accuracy: eval)")
