"""Demo stage `eval`: every checkpoint the run made, on the same held-out measures."""

from __future__ import annotations

import json

from llm.demo.context import Context

NAME = "eval"
DESCRIPTION = ("every checkpoint on held-out arithmetic (8 sampled answers a question) and "
               "bits per byte on unseen standard-library sources")
MODELS = {"base": "pretrain", "SFT": "sft", "DPO": "dpo", "GRPO": "grpo", "PPO": "ppo"}
BPB_TASK = "stdlib_bpb"
SEEDS = (0, 1, 2)  # sampling seeds; the outcome tests' margin is twice SFT's spread over them


def run(ctx: Context) -> dict:
    """Held-out accuracy and bits per byte for each stage's model that exists."""
    from llm.demo.measure import heldout_accuracy, heldout_rows
    from llm.eval import runner

    rows = heldout_rows(ctx.workdir)
    results = {}
    for label, stage in MODELS.items():
        workdir = ctx.workdir / stage
        if not (workdir / "checkpoints").is_dir():
            continue
        model = runner.EvalModel.load(str(workdir), progress=False)
        bpb = runner.evaluate(model, [BPB_TASK])[BPB_TASK]["bits_per_byte"]
        per_seed = [heldout_accuracy(workdir, rows, seed=s) for s in SEEDS]
        accuracy = sum(per_seed) / len(per_seed)
        results[label] = {"workdir": str(workdir), "heldout_accuracy": accuracy,
                          "heldout_accuracy_per_seed": per_seed, "bits_per_byte": bpb}
        print(f"{label}: held-out accuracy {accuracy:.1%}, {BPB_TASK} {bpb:.3f}", flush=True)
    if "SFT" in results:
        sft = results["SFT"]["heldout_accuracy_per_seed"]
        margin = 2 * (max(sft) - min(sft))
        for label in ("DPO", "GRPO", "PPO"):
            if label in results:
                gain = results[label]["heldout_accuracy"] - results["SFT"]["heldout_accuracy"]
                results[label].update(gain_over_sft=gain, margin=margin, clears=gain > margin)
    out = ctx.workdir / "eval"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return {"models": results, "questions": len(rows), "file": str(out / "results.json")}


def headline(result: dict) -> str:
    """The table cell: held-out exact-answer accuracy of each model."""
    from llm.demo.measure import SAMPLES

    cells = [f"{label} {r['heldout_accuracy']:.1%}" + (
        f" ({r['gain_over_sft']:+.1%})" if "gain_over_sft" in r else "")
        for label, r in result["models"].items()]
    margin = next((r["margin"] for r in result["models"].values() if "margin" in r), None)
    return (f"held-out accuracy ({result['questions']} questions × {SAMPLES}, mean of "
            f"{len(SEEDS)} seeds): " + ", ".join(cells)
            + (f"; a gain over SFT counts above {margin:.1%} (twice SFT's seed spread)"
               if margin is not None else ""))


def details(result: dict) -> str:
    """Below the table: one row per model with both measures."""
    lines = ["| model | held-out accuracy | seeds 0/1/2 | over SFT | bits per byte "
             "(stdlib, unseen) |", "|---|---|---|---|---|"]
    for label, r in result["models"].items():
        seeds = " / ".join(f"{a:.1%}" for a in r["heldout_accuracy_per_seed"])
        over = (f"{r['gain_over_sft']:+.1%} ({'above' if r['clears'] else 'not above'} "
                f"{r['margin']:.1%})" if "gain_over_sft" in r else "")
        lines.append(f"| {label} | {r['heldout_accuracy']:.1%} | {seeds} | {over} | "
                     f"{r['bits_per_byte']:.3f} |")
    return "\n".join(lines) + f"\n\n(written to {result['file']})"

