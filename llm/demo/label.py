"""Demo stage `label`: preference pairs from the fine-tuned model, ranked by a verifier."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "label"
DESCRIPTION = "answers sampled from the fine-tuned model, verified into preference pairs"


def run(ctx: Context) -> dict:
    """Four answers per held-out arithmetic question from the SFT model; the arithmetic
    verifier pairs right over wrong (scripts/label.py's sample and verifier modes)."""
    from llm.config import load_config
    from llm.label import modes

    out = ctx.workdir / "label"
    common = [f"output_dir={out}", "label.num_responses=4", "label.batch_size=8",
              "max_new_tokens=16", "temperature=1.0"]
    spec = str(ctx.root / "configs/label.py")
    modes.run(load_config(spec, ["mode=sample", f"init_from={ctx.workdir / 'sft'}",
                                 f"prompts_file={ctx.workdir / 'arithmetic_eval' / 'rl.jsonl'}",
                                 *common]))
    report = modes.run(load_config(spec, ["mode=verifier", "label.verifier=arithmetic",
                                          *common]))
    counts = report["judges"]["verifier:arithmetic"]
    return {"prompts": report["prompts"], "pairs": counts["pairs"],
            "no_contrast": counts["skips"].get("no_contrast", 0),
            "sft_rows": report["sft_rows"], "preferences": str(out / "preferences.jsonl")}


def headline(result: dict) -> str:
    """The table cell: pairs made and prompts without a right-and-wrong contrast."""
    return (f"{result['pairs']} verified preference pairs from {result['prompts']} questions "
            f"({result['no_contrast']} without both a right and a wrong answer), "
            f"{result['sft_rows']} verified SFT rows")
