"""The demo's one measure of answer quality, shared with the outcome tests: exact-answer
accuracy on held-out arithmetic, the mean over sampled answers per question."""

from __future__ import annotations

import json
import pathlib

SAMPLES = 8  # sampled answers per held-out question


def heldout_rows(workdir: pathlib.Path) -> list[dict]:
    """The held-out questions the SFT stage wrote (never in any training file)."""
    path = workdir / "arithmetic" / "heldout.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def heldout_accuracy(model_or_init_from, rows: list[dict], *, samples: int = SAMPLES,
                     seed: int = 0, temperature: float = 1.0, max_new_tokens: int = 16,
                     tokenizer=None) -> float:
    """Mean exact-answer accuracy over `samples` sampled answers per row.

    `model_or_init_from` is an NNX model (then pass its `tokenizer`) or any `init_from`
    (a workdir, a checkpoint directory, `hf:DIR`).
    """
    from flax import nnx

    from llm.data.tokenizer import Tokenizer
    from llm.loading import load_model
    from llm.train.sft import answer_accuracy

    model = model_or_init_from
    if isinstance(model, (str, pathlib.Path)):
        loaded = load_model(str(model))
        model = nnx.merge(loaded.graphdef, loaded.params)
        tokenizer = Tokenizer.load(loaded.tokenizer_dir)
    if tokenizer is None:
        raise ValueError("heldout_accuracy: pass the tokenizer with a model")
    return answer_accuracy(model, tokenizer, rows, "arithmetic", max_new_tokens,
                           samples=samples, temperature=temperature, seed=seed)


def metric_rows(workdir: pathlib.Path, key: str) -> list[dict]:
    """The metrics.jsonl rows of a training workdir that carry `key`."""
    path = workdir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [row for row in rows if key in row]
