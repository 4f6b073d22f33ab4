"""Demo stage `reward`: a reward model on the label stage's verified pairs."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "reward"
DESCRIPTION = "a reward model (score head on the SFT model) trained on the verified pairs"
# 1500 steps at lr 5e-5: on the SFT model's own answers to held-out questions this ranks a
# right answer over a wrong one 63% of the time; 150 steps at 1e-3 stayed at chance (49-53%)
# (docs/benchmarks.md, PPO outcome).
STEPS = 1500
SETTINGS = ["data.split.validation=0.1", "batch_size=16", "seq_len=64", "optim.lr=5e-5",
            "optim.warmup_steps=10", "eval.steps=12", "log.every_steps=100"]


def run(ctx: Context) -> dict:
    """Bradley-Terry training from the SFT model; pair accuracy on train and held-out pairs."""
    from llm.train.loop import train

    steps = ctx.steps_of(STEPS)
    config = ctx.config("reward.py:model=tiny", [
        f"workdir={ctx.workdir / 'reward'}", f"init_from={ctx.workdir / 'sft'}",
        f"data.path={ctx.workdir / 'label' / 'preferences.jsonl'}", *SETTINGS,
        f"total_steps={steps}", f"eval.every_steps={steps}", f"checkpoint.every_steps={steps}",
    ])
    final = train(config)
    return {"step": final["step"], "accuracy": final.get("accuracy"),
            "eval_accuracy": final.get("eval_accuracy"), "margin": final.get("margin")}


def headline(result: dict) -> str:
    """The table cell: pair accuracy on training and held-out pairs."""
    def pct(value):
        return "n/a" if value is None else f"{value:.1%}"
    return (f"pair accuracy {pct(result['accuracy'])} on training pairs, "
            f"{pct(result['eval_accuracy'])} on held-out pairs, after {result['step']} steps")
