"""The lm-evaluation-harness adapter against lm-eval's own Hugging Face backend.

Both score the same local task (a YAML and a JSONL, no downloads) on the same weights: ours
from the workdir, lm-eval's `hf` model from the project's fp32 export of it. Request by
request their log-likelihoods agree within 1e-4, and so do the accuracies.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")

import eval_helpers  # noqa: E402

from llm.eval import lm_eval as adapter  # noqa: E402 - after the importorskip guards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = [{"question": "What is 3 + 4?", "choices": ["7", "8", "12", "The answer is 7."],
         "label": 0},
        {"question": "What is 5 + 7?", "choices": ["12", " 13", "hello world"], "label": 0},
        {"question": "hello", "choices": ["world", " world", "fox jumps"], "label": 1},
        {"question": "def add(a, b):", "choices": ["\n    return a + b", "\n    pass"],
         "label": 0}]
TEXTS = [{"text": "Once upon a time there was a model that scored text. " * 4},
         {"text": "def add(a, b):\n    return a + b\n"}]


def task_dir(path, rows_file, texts_file):
    """lm-eval task YAMLs over local JSONL files (the packaged json builder: no hub)."""
    path.mkdir()
    (path / "local_mc.yaml").write_text(f"""task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows_file}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
""")
    (path / "local_ppl.yaml").write_text(f"""task: local_ppl
dataset_path: json
dataset_kwargs:
  data_files:
    test: {texts_file}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
""")
    (path / "local_gen.yaml").write_text(f"""task: local_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows_file}
test_split: test
output_type: generate_until
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices[label]}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 6
  do_sample: false
metric_list:
  - metric: exact_match
""")
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(workdir, fp32 HF export, lm-eval task dir)."""
    from llm.hf import convert
    from llm.loading import load_model

    root = tmp_path_factory.mktemp("lm_eval")
    workdir, _, _ = eval_helpers.make_workdir(root, max_seq_len=32)
    loaded = load_model(str(workdir))
    convert.export_hf(loaded.model_cfg, loaded.params, str(root / "hf"), dtype="float32",
                      tokenizer_dir=str(workdir / "tokenizer"))
    for name, rows in (("rows.jsonl", ROWS), ("texts.jsonl", TEXTS)):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return workdir, root / "hf", task_dir(root / "tasks", root / "rows.jsonl",
                                          root / "texts.jsonl")


def run(model, tasks_path):
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    return evaluator.simple_evaluate(model=model, tasks=["local_mc", "local_ppl", "local_gen"],
                                     task_manager=TaskManager(include_path=str(tasks_path)),
                                     log_samples=True, bootstrap_iters=0)


@pytest.mark.slow
def test_adapter_matches_lm_evals_hf_backend_request_by_request(setup):
    from lm_eval.models.huggingface import HFLM

    workdir, hf_dir, tasks_path = setup
    adapter.set_offline()
    ours = run(adapter.LLMLM(init_from=str(workdir), batch_size=4, mesh="data:1"), tasks_path)
    theirs = run(HFLM(pretrained=str(hf_dir), dtype="float32", batch_size=4, device="cpu",
                      add_bos_token=True), tasks_path)
    for task in ("local_mc", "local_ppl"):
        a, b = ours["samples"][task], theirs["samples"][task]
        assert len(a) == len(b) > 0
        for x, y in zip(a, b, strict=True):
            ll_x = np.array([r[0][0] if isinstance(r[0], list | tuple) else r[0]
                             for r in x["resps"]], float)
            ll_y = np.array([r[0][0] if isinstance(r[0], list | tuple) else r[0]
                             for r in y["resps"]], float)
            np.testing.assert_allclose(ll_x, ll_y, atol=1e-4, rtol=0)
    # greedy text, request by request (a random model with spread logits: no near ties)
    assert [x["resps"] for x in ours["samples"]["local_gen"]] == \
        [y["resps"] for y in theirs["samples"]["local_gen"]]
    for metric in ("acc,none", "acc_norm,none"):
        assert ours["results"]["local_mc"][metric] == theirs["results"]["local_mc"][metric]
    np.testing.assert_allclose(ours["results"]["local_ppl"]["word_perplexity,none"],
                               theirs["results"]["local_ppl"]["word_perplexity,none"],
                               rtol=1e-4)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llm.eval.lm_eval", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})


@pytest.mark.slow
def test_cli_runs_a_local_task_and_a_download_is_one_clear_error(setup, tmp_path):
    workdir, _, tasks_path = setup
    done = run_cli("--model", "llm", "--model_args", f"init_from={workdir}", "--batch_size", "8",
                   "--tasks", "local_mc", "--include_path", str(tasks_path),
                   "--output_path", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert "local_mc" in done.stdout and "acc" in done.stdout
    failed = run_cli("--model", "llm", "--model_args", f"init_from={workdir}",
                     "--tasks", "arc_easy")
    assert failed.returncode == 2, failed.stderr[-2000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "arc_easy" in errors[0] and "offline" in errors[0], \
        failed.stderr[-2000:]
    assert "Retrying" not in failed.stderr and "Traceback" not in failed.stderr


@pytest.mark.slow
def test_an_hf_export_scores_as_the_workdir_it_came_from(setup):
    from llm.eval.runner import EvalModel

    workdir, hf_dir, _ = setup
    requests = [(f"Question: {r['question']}\nAnswer:", " " + c) for r in ROWS
                for c in r["choices"]]
    ours = EvalModel.load(str(workdir), progress=False).loglikelihood(requests)
    exported = EvalModel.load(f"hf:{hf_dir}", progress=False).loglikelihood(requests)
    np.testing.assert_allclose([a for a, _ in ours], [b for b, _ in exported], atol=1e-5)
