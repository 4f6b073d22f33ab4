"""Supervised fine-tuning: masked CE on assistant tokens of packed chat examples.

Full, LoRA, QLoRA or prefix training comes from the shared `peft.*` section; the base comes
from `init_from` (a pretraining workdir, a checkpoint or `hf:DIR`), whose tokenizer the
data is prepared with. Evaluation adds exact-match accuracy on held-out prompts.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from llm import rewards
from llm.train.pretrain import PretrainTask


def base_tokenizer_dir(init_from: str) -> pathlib.Path | None:
    """The tokenizer directory that comes with `init_from` (a workdir, step dir or hf:DIR)."""
    if not init_from:
        return None
    path = pathlib.Path(init_from[3:] if init_from.startswith("hf:") else init_from)
    for candidate in (path / "tokenizer", path.parent.parent / "tokenizer", path):
        if (candidate / "tokenizer.model").exists() or (candidate / "tokenizer.json").exists():
            return candidate
    return None


class SftTask(PretrainTask):
    """Masked next-token CE where only assistant tokens are targets."""

    name = "sft"
    kind = "sft"

    def check(self) -> None:
        """The `sft.*` eval keys, before training starts (not at the first evaluation)."""
        sft = self.config.sft
        if not sft.eval_file:
            return
        if sft.eval_verifier not in rewards.names():
            raise ValueError(f"sft.eval_verifier={sft.eval_verifier!r}: expected one of "
                             f"{rewards.names()}")
        for key in ("eval_examples", "eval_max_new_tokens"):
            if sft[key] < 1:
                raise ValueError(f"sft.{key}={sft[key]}: expected >= 1")
        if not read_eval_rows(sft.eval_file):
            raise ValueError(f"sft.eval_file={sft.eval_file}: no prompt/answer rows")

    def loader(self):
        from llm.data import loaders

        return loaders.sft_loader

    def base_tokenizer(self) -> str:
        """The base model's vocabulary: SFT data must be tokenised as the base was."""
        tokenizer_dir = base_tokenizer_dir(self.config.init_from)
        return str(tokenizer_dir) if tokenizer_dir is not None else ""

    def evaluate(self, models, step):
        """Answer accuracy of greedy completions on `sft.eval_file` (prompt/answer JSONL)."""
        if not self.config.sft.eval_file:
            return {}
        from llm.data.tokenizer import Tokenizer

        tokenizer = Tokenizer.load(pathlib.Path(self.config.workdir) / "tokenizer")
        rows = read_eval_rows(self.config.sft.eval_file)[: self.config.sft.eval_examples]
        return {"eval_answer_accuracy": answer_accuracy(
            models.policy(), tokenizer, rows, self.config.sft.eval_verifier,
            self.config.sft.eval_max_new_tokens)}


def read_eval_rows(path: str) -> list[dict]:
    """`prompt`/`answer` rows of a JSONL file; errors name the file and line."""
    try:
        lines = pathlib.Path(path).read_text().splitlines()
    except OSError as error:
        raise ValueError(f"sft.eval_file={path}: {error.strerror}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not JSON ({error.msg})") from None
        if not isinstance(row, dict) or "prompt" not in row or "answer" not in row:
            raise ValueError(f"{path}:{number}: expected an object with 'prompt' and 'answer'")
        rows.append(row)
    return rows


def answer_accuracy(model, tokenizer, rows: list[dict], verifier: str,
                    max_new_tokens: int, *, samples: int = 1, temperature: float = 0.0,
                    seed: int = 0) -> float:
    """Mean over rows and `samples` chat completions each of the verifier's acceptance.

    Greedy by default; with `temperature` > 0, completion j of row i is sampled with seed
    `seed + j * len(rows) + i`, so a result is reproducible from (seed, rows).
    """
    from flax import nnx

    from llm.sampling.sampler import chat_sampler

    if verifier not in rewards.names():
        raise ValueError(f"sft.eval_verifier={verifier!r}: expected one of {rewards.names()}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if not rows:
        return 0.0
    graphdef, params = nnx.split(model)
    sampler, end_ids = chat_sampler(graphdef, params, tokenizer)
    prompts = [sampler.chat_template([{"role": "user", "content": str(r["prompt"])}])
               for r in rows] * samples
    completions = sampler.complete(prompts, temperature=temperature,
                                   max_new_tokens=max_new_tokens, stop_token_ids=end_ids,
                                   seed=[seed + i for i in range(len(prompts))])
    scores = rewards.score(verifier, [str(r["prompt"]) for r in rows] * samples,
                           [c.text for c in completions],
                           answer=[r["answer"] for r in rows] * samples)
    return float(np.mean([score > 0 for score in scores]))
