"""The whole pipeline, as far as it is built, on embedded default data, in a few minutes.

    python scripts/demo.py [--workdir=runs/demo] [--stages=data,pretrain,sample] [--steps=N]

Stages: `data` (the Python standard library's own sources → cleaned, deduplicated,
tokenised corpus), `pretrain` (a tiny LLaMA-style model), `sample` (text from it), `sft`
(fine-tuning on generated arithmetic, with answer accuracy before and after). Each
stage writes under the workdir and can be rerun alone; a table of what each achieved and a
PNG of the curves close the run.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time

from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "where every stage writes")
_STAGES = flags.DEFINE_list("stages", ["data", "pretrain", "sample", "sft"], "stages to run")
_STEPS = flags.DEFINE_integer("steps", 300, "pretraining steps")
_SFT_STEPS = flags.DEFINE_integer("sft_steps", 300, "fine-tuning steps")
_FILES = flags.DEFINE_integer("files", 400, "standard-library files in the corpus")


def stage_data(workdir: pathlib.Path) -> dict:
    """Write the stdlib corpus (decoded as Python decodes it) and prepare it."""
    import ml_collections

    from configs.data import data_section
    from llm.data import prepare as prepare_lib
    from llm.data.sources import iter_stdlib_sources, stdlib_corpus_dir

    corpus = workdir / "corpus"
    if not corpus.exists():
        root = stdlib_corpus_dir()
        tmp = workdir / "corpus.tmp"
        for path, text in iter_stdlib_sources(limit=_FILES.value):
            target = tmp / pathlib.Path(path).relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        tmp.rename(corpus)
    data = data_section()
    with data.unlocked():
        data.inputs = str(corpus)
        data.output_dir = str(workdir / "prepared")
        data.tokenizer.vocab_size = 2048
        data.split.validation = 0.05
    data = ml_collections.ConfigDict(data)
    prepared = prepare_lib.prepare(data)
    report = json.loads((prepared / "report.json").read_text())
    return {"prepared": str(prepared), "report": report}


def stage_pretrain(workdir: pathlib.Path) -> dict:
    """Pretrain the tiny model on the prepared corpus; returns final metrics."""
    from llm.config import load_config
    from llm.train.loop import train

    root = pathlib.Path(__file__).resolve().parents[1]
    config = load_config(str(root / "configs/pretrain.py") + ":model=tiny", [
        f"workdir={workdir / 'pretrain'}", f"data.path={workdir / 'prepared'}",
        f"total_steps={_STEPS.value}", "batch_size=16", "seq_len=128", "optim.lr=3e-3",
        "optim.warmup_steps=30", "log.every_steps=25", "eval.every_steps=100",
        "eval.steps=4", "checkpoint.every_steps=100",
    ])
    return train(config)


def stage_sample(workdir: pathlib.Path) -> dict:
    """Sampled continuations from the pretrained model (the training forward, KV-cached)."""
    from llm.sampling.sampler import load_sampler

    sampler, _ = load_sampler(str(workdir / "pretrain"))
    prompts = ["def ", "import os\n", "class "]
    completions = sampler.complete(prompts, max_new_tokens=48, temperature=0.7, top_p=0.9,
                                   seed=0)
    for prompt, completion in zip(prompts, completions, strict=True):
        print(f"--- {prompt!r}\n{prompt}{completion.text}")
    return {"samples": {p: c.text for p, c in zip(prompts, completions, strict=True)}}


def stage_sft(workdir: pathlib.Path) -> dict:
    """Fine-tune the pretrained model on generated arithmetic; answer accuracy before/after."""
    from llm.checkpoint import load_model
    from llm.config import load_config
    from llm.data import synthetic
    from llm.data.tokenizer import Tokenizer
    from llm.train.loop import train
    from llm.train.sft import answer_accuracy, read_eval_rows

    files = synthetic.generate("arithmetic", workdir / "arithmetic", n=4000, difficulty=1,
                               seed=0)
    held_out = synthetic.generate("arithmetic", workdir / "arithmetic_eval", n=200,
                                  difficulty=1, seed=1)["rl"]
    # Single-digit problems repeat: hold out 40 distinct questions and train on the rest only.
    eval_rows = list({r["prompt"]: r for r in map(json.loads, held_out.read_text()
                                                   .splitlines())}.values())[:40]
    held_out.write_text("".join(json.dumps(r) + "\n" for r in eval_rows))
    unseen = {r["prompt"] for r in eval_rows}
    train_lines = [line for line in files["sft"].read_text().splitlines()
                   if json.loads(line)["messages"][0]["content"] not in unseen]
    files["sft"].write_text("".join(line + "\n" for line in train_lines))
    base = load_model(str(workdir / "pretrain"))
    tokenizer = Tokenizer.load(base.tokenizer_dir)
    rows = read_eval_rows(str(held_out))
    from flax import nnx

    before = answer_accuracy(nnx.merge(base.graphdef, base.params), tokenizer, rows,
                             "arithmetic", 16)
    root = pathlib.Path(__file__).resolve().parents[1]
    config = load_config(str(root / "configs/sft.py") + ":model=tiny", [
        f"workdir={workdir / 'sft'}", f"data.path={files['sft']}",
        f"init_from={workdir / 'pretrain'}", f"sft.eval_file={held_out}",
        "sft.eval_verifier=arithmetic", "sft.eval_max_new_tokens=16",
        f"total_steps={_SFT_STEPS.value}", "batch_size=16", "seq_len=128", "optim.lr=1e-3",
        "log.every_steps=25", f"eval.every_steps={_SFT_STEPS.value}", "eval.steps=4",
        f"checkpoint.every_steps={_SFT_STEPS.value}",
    ])
    result = train(config)
    return {"accuracy_before": before, "accuracy_after": result["eval_answer_accuracy"],
            "eval_loss": result.get("eval_loss")}


def plot_curves(workdir: pathlib.Path) -> pathlib.Path | None:
    """PNG of training and validation loss from metrics.jsonl."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = workdir / "pretrain" / "metrics.jsonl"
    if not metrics.exists():
        return None
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    ax.plot([r["step"] for r in train_rows], [r["loss"] for r in train_rows], label="train")
    ax.plot([r["step"] for r in eval_rows], [r["eval_loss"] for r in eval_rows], "o-",
            label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("pretraining on the Python standard library")
    ax.legend()
    path = workdir / "curves.png"
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def main(argv: list[str]) -> None:
    """Run the selected stages in order and print what each achieved."""
    del argv
    logging.set_verbosity(logging.WARNING)
    root = pathlib.Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root))
    from llm import host_memory

    host_memory.retain_freed_memory()
    workdir = pathlib.Path(_WORKDIR.value).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    stages = {"data": stage_data, "pretrain": stage_pretrain, "sample": stage_sample,
              "sft": stage_sft}
    unknown = [s for s in _STAGES.value if s not in stages]
    if unknown:
        raise app.UsageError(f"--stages: unknown {unknown}; known: {', '.join(stages)}")
    summary = []
    for name in _STAGES.value:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        try:
            result = stages[name](workdir)
        except (ValueError, RuntimeError) as error:  # bad input: one line, no traceback
            print(f"error: stage {name}: {error}", file=sys.stderr)
            sys.exit(2)
        summary.append((name, time.perf_counter() - start, _headline(name, result)))
    png = plot_curves(workdir)
    print("\n| stage | seconds | result |\n|---|---|---|")
    for name, seconds, headline in summary:
        print(f"| {name} | {seconds:.0f} | {headline} |")
    if png:
        print(f"\ncurves: {png}")


def _headline(name: str, result: dict) -> str:
    if name == "data":
        report = result["report"]
        counts = report.get("summary", report)
        return f"prepared {result['prepared']}: " + json.dumps(counts)[:300]
    if name == "pretrain":
        trained = (f"train loss {result['loss']:.3f}" if "loss" in result
                   else "already trained (rerun)")
        return (f"{trained}, validation perplexity "
                f"{result.get('eval_perplexity', float('nan')):.1f} after {result['step']} "
                "steps")
    if name == "sample":
        return json.dumps(result)[:400]
    if name == "sft":
        return (f"answer accuracy on 40 held-out arithmetic questions: "
                f"{result['accuracy_before']:.1%} before, {result['accuracy_after']:.1%} after SFT")
    return json.dumps(result)[:300]


if __name__ == "__main__":
    app.run(main)
