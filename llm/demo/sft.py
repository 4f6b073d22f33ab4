"""Demo stage `sft`: fine-tuning on generated arithmetic, answer accuracy before and after."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "sft"
DESCRIPTION = "fine-tuning on generated arithmetic, with answer accuracy before and after"
# a ± b with operands 0-19: 800 questions, so 200 can be held out and SFT must generalise
# (difficulty-1 `arithmetic` has 200, which SFT memorises); more held-out questions also
# shrink the seed-to-seed spread the outcome tests' thresholds are made of.
GENERATOR = "sums"
EVAL_QUESTIONS = 200


def run(ctx: Context) -> dict:
    """Fine-tune the pretrained model on generated arithmetic; answer accuracy before/after."""
    from flax import nnx

    from llm.config import load_config
    from llm.data import synthetic
    from llm.data.tokenizer import Tokenizer
    from llm.loading import load_model
    from llm.train.loop import train
    from llm.train.sft import answer_accuracy, read_eval_rows

    workdir = ctx.workdir
    files = synthetic.generate(GENERATOR, workdir / "arithmetic", n=4000, difficulty=1,
                               seed=0, heldout=EVAL_QUESTIONS)
    held_out = files["heldout"]
    base = load_model(str(workdir / "pretrain"))
    tokenizer = Tokenizer.load(base.tokenizer_dir)
    rows = read_eval_rows(str(held_out))
    before = answer_accuracy(nnx.merge(base.graphdef, base.params), tokenizer, rows,
                             "arithmetic", 16)
    config = load_config(str(ctx.root / "configs/sft.py") + ":model=tiny", [
        f"workdir={workdir / 'sft'}", f"data.path={files['sft']}",
        f"init_from={workdir / 'pretrain'}", f"sft.eval_file={held_out}",
        "sft.eval_verifier=arithmetic", "sft.eval_max_new_tokens=16",
        f"total_steps={ctx.sft_steps}", "batch_size=16", "seq_len=128", "optim.lr=1e-3",
        "log.every_steps=25", f"eval.every_steps={ctx.sft_steps}", "eval.steps=4",
        f"checkpoint.every_steps={ctx.sft_steps}",
    ])
    result = train(config)
    return {"accuracy_before": before, "accuracy_after": result["eval_answer_accuracy"],
            "eval_loss": result.get("eval_loss")}


def headline(result: dict) -> str:
    """The table cell: answer accuracy before and after fine-tuning."""
    return (f"answer accuracy on {EVAL_QUESTIONS} held-out arithmetic questions: "
            f"{result['accuracy_before']:.1%} before, {result['accuracy_after']:.1%} after SFT")
