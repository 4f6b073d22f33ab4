"""End to end: a pretraining run logs `eval.tasks` metrics, and `scripts/eval.py` compares
it with its random start in one table (the trained model has the lower bits per byte)."""

import json
import math
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("tokenizers")
pytest.importorskip("transformers")

import eval_helpers  # noqa: E402

from llm.config import load_config  # noqa: E402
from llm.data.sources import iter_stdlib_sources  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
TASK = """name: heldout_bpb
kind: perplexity
source: stdlib
skip: 400
limit: 4
max_chars: 1500
"""


def eval_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "eval.py"),
                           "--config=configs/eval.py", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})


def test_bad_input_is_one_error_line_before_any_model_loads(tmp_path):
    existing = tmp_path / "results.json"
    existing.write_text("{}")
    for args, expected in (
            (["--config.init_from=" + str(tmp_path), "--config.tasks=arithmetc_mc"],
             "unknown task 'arithmetc_mc'"),
            (["--config.init_from=" + str(tmp_path / "nope")], "no such directory"),
            (["--config.init_from=" + str(tmp_path), f"--config.output_file={existing}"],
             "exists; it is never overwritten"),
            (["--config.init_from=" + str(tmp_path), "--config.prefill_chunk=48"],
             "--config.prefill_chunk=48: expected a power of two")):
        done = eval_cli(*args)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
        assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert existing.read_text() == "{}"


@pytest.mark.slow
def test_training_logs_eval_tasks_and_the_trained_model_compares_better(tmp_path):
    from llm.data.tokenizer import Tokenizer
    from llm.train import get_task
    from llm.train.loop import train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n, (_, text) in enumerate(iter_stdlib_sources(limit=40)):
        (corpus / f"{n}.py").write_text(text)
    tok_dir = eval_helpers.tokenizer_dir(tmp_path / "tok")
    task_file = tmp_path / "heldout_bpb.yaml"
    task_file.write_text(TASK)
    runs = {}
    for name, steps in (("random", 1), ("trained", 80)):
        config = load_config("configs/pretrain.py:model=tiny", [
            f"workdir={tmp_path / name}", f"total_steps={steps}", "batch_size=8",
            "seq_len=64", f"data.path={corpus}", f"data.tokenizer.path={tok_dir}",
            "optim.warmup_steps=5", f"eval.every_steps={steps}",
            f"eval.tasks={task_file}", "checkpoint.every_steps=1000", "log.every_steps=20",
            # lr 0: the "random" run's one step leaves its initialisation as it was
            "optim.lr=0.0" if name == "random" else "optim.lr=3e-3"])
        train(config, get_task(config.task)(config))
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text()
                .splitlines()]
        runs[name] = next(r for r in rows if "eval_heldout_bpb_bits_per_byte" in r)
    out = tmp_path / "compare.json"
    done = eval_cli(f"--config.compare={tmp_path / 'random'},{tmp_path / 'trained'}",
                    f"--config.tasks={task_file}", f"--config.output_file={out}",
                    "--config.batch_size=8")
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    bpb = [r["tasks"]["heldout_bpb"]["bits_per_byte"] for r in results]
    logged = [runs[n]["eval_heldout_bpb_bits_per_byte"] for n in ("random", "trained")]
    assert bpb == pytest.approx(logged, rel=1e-4)  # the loop and the script agree
    vocab = Tokenizer.load(tok_dir).vocab_size
    per_byte = results[0]["tasks"]["heldout_bpb"]["tokens_per_byte"]
    assert bpb[0] == pytest.approx(math.log2(vocab) * per_byte, rel=0.05)
    assert bpb[1] < 0.8 * bpb[0]
    table = out.with_suffix(".md").read_text()
    assert "heldout_bpb bits_per_byte" in table and "±" in table
    assert out.with_suffix(".csv").read_text().startswith(
        "model,heldout_bpb/bits_per_byte,heldout_bpb/bits_per_byte_stderr")
