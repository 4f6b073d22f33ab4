"""Demo stage `dpo`: preference optimisation on the label stage's verified pairs."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "dpo"
DESCRIPTION = "the DPO family (ORPO) from the SFT model on the verified pairs"
STEPS = 300  # tests/test_dpo_outcome.py proves these settings and budget on this start
# ORPO (the odds-ratio term plus the SFT loss on the chosen answer): on these on-policy pairs
# plain sigmoid DPO pushes down the tokens both answers share (docs/benchmarks.md, DPO outcome).
SETTINGS = ["dpo.loss_type=orpo", "dpo.beta=0.1", "optim.lr=3e-4", "optim.warmup_steps=10",
            "batch_size=16", "seq_len=64", "eval.every_steps=0", "log.every_steps=20",
            "data.num_workers=0"]


def run(ctx: Context) -> dict:
    """Train from the SFT model on the verified pairs; the last logged preference metrics."""
    from llm.train.loop import train

    steps = ctx.steps_of(STEPS)
    final = train(ctx.config("dpo.py:model=tiny", [
        f"workdir={ctx.workdir / 'dpo'}", f"init_from={ctx.workdir / 'sft'}",
        f"data.path={ctx.workdir / 'label' / 'preferences.jsonl'}", *SETTINGS,
        f"total_steps={steps}", f"checkpoint.every_steps={steps}"]))
    return {"step": final["step"], "margins": final.get("rewards/margins"),
            "accuracies": final.get("rewards/accuracies")}


def headline(result: dict) -> str:
    """The table cell: implicit-reward accuracy and margin at the end of training."""
    if result["accuracies"] is None:
        return f"already trained ({result['step']} steps)"
    return (f"chosen over rejected {result['accuracies']:.1%} of pairs, reward margin "
            f"{result['margins']:.2f} after {result['step']} steps (held-out accuracy: eval)")
