"""SmolLM2-135M-Instruct (llm/demo/smollm2) under `python -m llm.eval.lm_eval --model llm
--model_args init_from=hf:DIR` scores a local multiple-choice task as lm-eval's own Hugging
Face backend does on the same directory: per-choice log-likelihoods within 1e-4 (+1e-5
relative), the same acc and acc_norm.

The model's tokenizer does not add BOS (`<|im_start|>`=1) when encoding text, and lm-eval's
HF backend (add_bos_token unset) leaves it that way. A BOS added on one side only (tried:
ours forced, or theirs with add_bos_token=True) puts 95 of the 96 log-likelihoods out of
tolerance, by up to 3.2, so the comparison also pins BOS.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("lm_eval")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# (question, four choices, index of the answer): easy and hard ones, so a 135M model gets
# some right and some wrong and acc is strictly between 0 and 1.
QUESTIONS = [
    ("What is the capital of France?", ["Paris", "Berlin", "Madrid", "Rome"], 0),
    ("How many legs does a spider have?", ["six", "four", "eight", "ten"], 2),
    ("What color is the sky on a clear day?", ["green", "blue", "red", "yellow"], 1),
    ("Which animal is known as the king of the jungle?", ["elephant", "tiger", "zebra",
                                                          "lion"], 3),
    ("What do bees make?", ["milk", "silk", "honey", "wool"], 2),
    ("Which planet is closest to the Sun?", ["Mercury", "Venus", "Earth", "Mars"], 0),
    ("What is frozen water called?", ["steam", "ice", "fog", "sand"], 1),
    ("How many days are in a week?", ["five", "six", "seven", "eight"], 2),
    ("Which gas do plants take in from the air?", ["oxygen", "helium", "nitrogen",
                                                   "carbon dioxide"], 3),
    ("Who wrote Romeo and Juliet?", ["William Shakespeare", "Charles Dickens", "Jane Austen",
                                     "Mark Twain"], 0),
    ("What is the largest ocean on Earth?", ["Atlantic", "Indian", "Arctic", "Pacific"], 3),
    ("What is the boiling point of water at sea level in Celsius?", ["50 degrees",
                                                                     "100 degrees",
                                                                     "150 degrees",
                                                                     "200 degrees"], 1),
    ("Which organ pumps blood through the body?", ["lungs", "liver", "heart", "kidney"], 2),
    ("What is the chemical symbol for gold?", ["Ag", "Au", "Fe", "Pb"], 1),
    ("In which country are the pyramids of Giza?", ["Egypt", "Mexico", "Peru", "Greece"], 0),
    ("What is the square root of 144?", ["10", "11", "14", "12"], 3),
    ("Which metal is liquid at room temperature?", ["iron", "mercury", "copper",
                                                    "aluminium"], 1),
    ("What is the capital of Australia?", ["Sydney", "Melbourne", "Canberra", "Perth"], 2),
    ("Who painted the Mona Lisa?", ["Vincent van Gogh", "Pablo Picasso", "Claude Monet",
                                    "Leonardo da Vinci"], 3),
    ("How many continents are there?", ["seven", "five", "six", "nine"], 0),
    ("What is the hardest natural substance?", ["gold", "granite", "diamond", "quartz"], 2),
    ("Which language has the most native speakers?", ["English", "Mandarin Chinese",
                                                      "Spanish", "Hindi"], 1),
    ("In what year did the First World War begin?", ["1905", "1939", "1914", "1918"], 2),
    ("What is the smallest prime number?", ["two", "zero", "one", "three"], 0),
]
TASK = """task: smollm2_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {rows}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def task_dir(root: pathlib.Path) -> pathlib.Path:
    """The task's YAML over a local JSONL (lm-eval's json builder: no hub)."""
    rows = root / "rows.jsonl"
    rows.write_text("".join(json.dumps({"question": q, "choices": c, "label": a}) + "\n"
                            for q, c, a in QUESTIONS))
    (root / "tasks").mkdir()
    (root / "tasks" / "smollm2_mc.yaml").write_text(TASK.format(rows=rows))
    return root / "tasks"


def ours_via_cli(hf_dir: pathlib.Path, tasks: pathlib.Path, out: pathlib.Path
                 ) -> tuple[dict, list[dict]]:
    """(metrics, per-sample log) of the adapter's command line."""
    proc = subprocess.run(
        [sys.executable, "-m", "llm.eval.lm_eval", "--model", "llm",
         "--model_args", f"init_from=hf:{hf_dir},mesh=data:1", "--batch_size", "32",
         "--tasks", "smollm2_mc", "--include_path", str(tasks), "--output_path", str(out),
         "--log_samples"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    [results] = out.rglob("results_*.json")
    [samples] = out.rglob("samples_smollm2_mc_*.jsonl")
    return (json.loads(results.read_text())["results"]["smollm2_mc"],
            [json.loads(line) for line in samples.read_text().splitlines()])


def theirs_via_hf_backend(hf_dir: pathlib.Path, tasks: pathlib.Path) -> tuple[dict, list[dict]]:
    """(metrics, per-sample log) of lm-eval's `hf` model, its BOS handling left at default."""
    from lm_eval import evaluator
    from lm_eval.tasks import TaskManager

    out = evaluator.simple_evaluate(
        model="hf", model_args=f"pretrained={hf_dir},dtype=float32", tasks=["smollm2_mc"],
        batch_size=32, device="cpu", task_manager=TaskManager(include_path=str(tasks)),
        log_samples=True, bootstrap_iters=0)
    return out["results"]["smollm2_mc"], out["samples"]["smollm2_mc"]


def choice_logliks(samples: list[dict]) -> np.ndarray:
    """[question, choice] log-likelihoods, in document order."""
    rows = sorted(samples, key=lambda s: s["doc_id"])
    return np.array([[float(r[0][0]) if isinstance(r[0], list | tuple) else float(r[0])
                      for r in s["resps"]] for s in rows])


@pytest.mark.slow
def test_adapter_cli_scores_smollm2_as_lm_evals_hf_backend(smollm2_dir, tmp_path):
    tasks = task_dir(tmp_path)
    ours, our_samples = ours_via_cli(smollm2_dir, tasks, tmp_path / "out")
    theirs, their_samples = theirs_via_hf_backend(smollm2_dir, tasks)

    ll_ours, ll_theirs = choice_logliks(our_samples), choice_logliks(their_samples)
    assert ll_ours.shape == ll_theirs.shape == (len(QUESTIONS), 4)
    # float32 through 30 layers, XLA against torch: sums of a few token log-probs agree to
    # ~1e-4 (relative ~1e-5); a BOS on one side only moves most of them by 0.1 to 3
    np.testing.assert_allclose(ll_ours, ll_theirs, atol=1e-4, rtol=1e-5)
    for metric in ("acc,none", "acc_norm,none"):
        assert ours[metric] == theirs[metric], (metric, ours[metric], theirs[metric])
    assert 0 < theirs["acc,none"] < 1 and 0 < theirs["acc_norm,none"] < 1


@pytest.mark.slow
def test_add_bos_token_puts_bos_where_lm_evals_hf_backend_does(smollm2_dir):
    """Unset, true and false, as `model_args` of either backend: the same ids for contexts,
    text opening with the BOS piece, and explicit add_special_tokens."""
    from lm_eval.models.huggingface import HFLM

    from llm.data.tokenizer import Tokenizer
    from llm.eval.lm_eval import encode_text

    ours = Tokenizer.load(smollm2_dir)
    texts = ["Question: What do bees make?\nAnswer:", "Question: What do bees make?\nAnswer: honey",
             "<|im_start|>user\nHi", " Paris"]
    for add_bos_token in (None, True, False):
        theirs = HFLM(pretrained=str(smollm2_dir), dtype="float32", device="cpu",
                      add_bos_token=add_bos_token)
        for text in texts:
            for special in (None, True, False):
                assert encode_text(ours, text, add_bos_token, special) == theirs.tok_encode(
                    text, add_special_tokens=special), (add_bos_token, text, special)
    # unset, SmolLM2's text has no BOS (its tokenizer adds none), as transformers encodes it
    assert encode_text(ours, texts[0], None)[0] != ours.bos_id == 1
