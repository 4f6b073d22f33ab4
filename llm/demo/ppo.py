"""Demo stage `ppo`: a short PPO run against the reward stage's model."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "ppo"
DESCRIPTION = "a short PPO run against the reward model, KL held by the adaptive controller"
STEPS = 20
TARGET_KL = 1.0
SETTINGS = ["batch_size=16", "ppo.num_mini_batches=1", "ppo.num_ppo_epochs=2",
            "rl.max_prompt_length=32", "rl.max_completion_length=16", "optim.lr=5e-5",
            f"ppo.target_kl={TARGET_KL}", "ppo.kl_horizon=2000", "ppo.beta=0.05",
            "ppo.value_model=separate", "rl.reward_funcs=arithmetic", "rl.reward_weights=0",
            "log.every_steps=1", "rl.log_samples_every=0",
            "rl.unstack_layers=False"]


def run(ctx: Context) -> dict:
    """PPO from the SFT model toward the reward model; its score and KL, first and last."""
    from llm.demo.measure import metric_rows
    from llm.train.loop import train

    steps = ctx.steps_of(STEPS)
    workdir = ctx.workdir / "ppo"
    final = train(ctx.config("ppo.py:model=tiny", [
        f"workdir={workdir}", f"init_from={ctx.workdir / 'sft'}",
        f"ppo.reward_model_path={ctx.workdir / 'reward'}",
        f"data.path={ctx.workdir / 'arithmetic' / 'rl.jsonl'}", *SETTINGS,
        f"total_steps={steps}", f"checkpoint.every_steps={steps}"]))
    rows = metric_rows(workdir, "objective/scores")
    return {"step": final["step"],
            "score_first": rows[0]["objective/scores"] if rows else None,
            "score_last": rows[-1]["objective/scores"] if rows else None,
            "kl_last": rows[-1]["objective/kl"] if rows else None}


def headline(result: dict) -> str:
    """The table cell: the reward model's mean score first and last, and the final KL."""
    if result["score_first"] is None:
        return f"already trained ({result['step']} steps)"
    return (f"reward-model score {result['score_first']:.3f} → {result['score_last']:.3f}, "
            f"KL to SFT {result['kl_last']:.2f} (target {TARGET_KL}) after {result['step']} "
            "steps")
