"""Demo stage `eval`: every checkpoint the run made, on the same held-out measures."""

from __future__ import annotations

import json

from llm.demo.context import Context

NAME = "eval"
DESCRIPTION = ("every checkpoint on held-out arithmetic (8 sampled answers a question) and "
               "bits per byte on unseen standard-library sources")
MODELS = {"base": "pretrain", "SFT": "sft", "DPO": "dpo", "GRPO": "grpo", "PPO": "ppo"}
BPB_TASK = "stdlib_bpb"


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
        accuracy = heldout_accuracy(workdir, rows, seed=0)
        results[label] = {"workdir": str(workdir), "heldout_accuracy": accuracy,
                          "bits_per_byte": bpb}
        print(f"{label}: held-out accuracy {accuracy:.1%}, {BPB_TASK} {bpb:.3f}", flush=True)
    out = ctx.workdir / "eval"
    out.mkdir(exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return {"models": results, "questions": len(rows), "file": str(out / "results.json")}


def headline(result: dict) -> str:
    """The table cell: held-out exact-answer accuracy of each model."""
    from llm.demo.measure import SAMPLES

    cells = [f"{label} {r['heldout_accuracy']:.1%}" for label, r in result["models"].items()]
    return (f"held-out accuracy ({result['questions']} questions × {SAMPLES}): "
            + ", ".join(cells))


def details(result: dict) -> str:
    """Below the table: one row per model with both measures."""
    lines = ["| model | held-out accuracy | bits per byte (stdlib, unseen) |", "|---|---|---|"]
    lines += [f"| {label} | {r['heldout_accuracy']:.1%} | {r['bits_per_byte']:.3f} |"
              for label, r in result["models"].items()]
    return "\n".join(lines) + f"\n\n(written to {result['file']})"

