"""Demo stage `pretrain`: a tiny LLaMA-style model on the prepared corpus."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "pretrain"
DESCRIPTION = "a tiny LLaMA-style model pretrained on the prepared corpus"


def run(ctx: Context) -> dict:
    """Pretrain the tiny model on the prepared corpus; returns final metrics."""
    from llm.config import load_config
    from llm.train.loop import train

    config = load_config(str(ctx.root / "configs/pretrain.py") + ":model=tiny", [
        f"workdir={ctx.workdir / 'pretrain'}", f"data.path={ctx.workdir / 'prepared'}",
        f"total_steps={ctx.steps}", "batch_size=16", "seq_len=128", "optim.lr=3e-3",
        "optim.warmup_steps=30", "log.every_steps=25", "eval.every_steps=100",
        "eval.steps=4", "checkpoint.every_steps=100",
    ])
    return train(config)


def headline(result: dict) -> str:
    """The table cell: final train loss (unless resumed finished) and validation perplexity."""
    trained = (f"train loss {result['loss']:.3f}" if "loss" in result
               else "already trained (rerun)")
    return (f"{trained}, validation perplexity "
            f"{result.get('eval_perplexity', float('nan')):.1f} after {result['step']} steps")
