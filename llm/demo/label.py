"""Demo stage `label`: preference pairs from the fine-tuned model, ranked by a verifier."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "label"
DESCRIPTION = "answers sampled from the fine-tuned model, verified into preference pairs"


PROMPTS = None  # distinct training questions labelled (None: all, as the DPO outcome test does)
RESPONSES = 8  # sampled answers per question


def run(ctx: Context) -> dict:
    """RESPONSES answers per training question from the SFT model; the arithmetic verifier pairs
    right over wrong (scripts/label.py's sample and verifier modes).

    The questions come from the SFT stage's training file, never its held-out one, so a
    stage trained on these pairs is still measured on unseen questions.
    """
    import json

    from llm.config import load_config
    from llm.label import modes

    out = ctx.workdir / "label"
    prompts = ctx.workdir / "label_prompts.jsonl"
    if not prompts.exists():
        rows = {}
        for line in (ctx.workdir / "arithmetic" / "rl.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows.setdefault(row["prompt"], row)
        prompts.write_text("".join(json.dumps(r) + "\n" for r in list(rows.values())[:PROMPTS]))
    common = [f"output_dir={out}", f"label.num_responses={RESPONSES}", "label.batch_size=32",
              "max_new_tokens=16", "temperature=1.0"]
    spec = str(ctx.root / "configs/label.py")
    modes.run(load_config(spec, ["mode=sample", f"init_from={ctx.workdir / 'sft'}",
                                 f"prompts_file={prompts}",
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
