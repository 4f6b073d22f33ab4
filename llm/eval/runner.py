"""Run evaluation tasks on a model: multiple choice, perplexity and generation.

`EvalModel` is a split model with its tokenizer (`EvalModel.load(init_from)` for a workdir,
a `checkpoints/<step>` directory or `hf:DIR`). `run_task(model, task)` returns the task's
metrics, each with `<metric>_stderr`, and `n` (rows scored); `evaluate(model, names)` runs
several by name. Log-likelihoods go through one `loglik.Scorer` per model (compiled once
per padded shape); generation through the sampler.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from llm.eval import loglik, stats
from llm.eval.task_files import EvalTask, TaskError, load_task


def make_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
    """A mesh of `shape` (-1: every remaining device) over the first devices it needs."""
    from llm import sharding

    sizes = [int(v) for v in shape.values()]
    devices = jax.devices() if -1 in sizes else jax.devices()[:math.prod(sizes)]
    return sharding.make_mesh(dict(shape), devices)


class Progress:
    """A one-line console progress bar: 'task 120/400 (35.2 req/s, ETA 0m08s)'."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.done = label, total, 0
        self.start = time.perf_counter()
        self.enabled = enabled and total > 0

    def __call__(self, n: int) -> None:
        """Count `n` more items done and redraw."""
        self.done += n
        if not self.enabled:
            return
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        eta = (self.total - self.done) / max(rate, 1e-9)
        end = "\n" if self.done >= self.total else ""
        print(f"\r{self.label} {self.done}/{self.total} ({rate:.1f}/s, ETA "
              f"{int(eta) // 60}m{int(eta) % 60:02d}s)", end=end, file=sys.stderr, flush=True)


@dataclasses.dataclass
class EvalModel:
    """A model to evaluate: split arrays, tokenizer, mesh, and its log-likelihood scorer."""

    graphdef: nnx.GraphDef
    params: Any
    tokenizer: Any
    mesh: jax.sharding.Mesh | None = None
    batch_size: int = 32
    max_len: int | None = None
    add_bos: bool = True
    progress: bool = True
    prefill_chunk: int = 64  # context tokens per compiled prefill call (a power of two)

    def __post_init__(self):
        if self.tokenizer is None:
            raise TaskError("this model has no tokenizer (tokenizer/ in its workdir, or the "
                            "HF directory's tokenizer files); evaluation tasks are text")
        self.scorer = loglik.Scorer(self.graphdef, self.params, max_len=self.max_len,
                                    batch_size=self.batch_size, mesh=self.mesh,
                                    prefill_chunk=self.prefill_chunk)

    @classmethod
    def load(cls, init_from: str, mesh: jax.sharding.Mesh | None = None, **kwargs: Any
             ) -> EvalModel:
        """The model and tokenizer of a workdir, `checkpoints/<step>` or `hf:DIR`."""
        from llm import loading
        from llm.data.tokenizer import Tokenizer

        loaded = loading.load_model(init_from, mesh=mesh)
        tokenizer = Tokenizer.load(loaded.tokenizer_dir) if loaded.tokenizer_dir else None
        return cls(loaded.graphdef, loaded.params, tokenizer, mesh, **kwargs)

    def encode(self, text: str) -> list[int]:
        """Text → ids with the BOS the model was trained with."""
        return self.tokenizer.encode(text, add_bos=self.add_bos)

    def loglikelihood(self, requests: Sequence[tuple[str, str]], label: str = "loglikelihood"
                      ) -> list[tuple[float, bool]]:
        """(log p(continuation | context), is greedy) of text pairs."""
        pairs = [loglik.encode_pair(self.encode, c, k) for c, k in requests]
        return self.scorer.loglikelihood(pairs, Progress(label, len(pairs), self.progress))


def run_task(model: EvalModel, task: EvalTask) -> dict[str, float]:
    """The task's metrics on `model`, with standard errors and the row count `n`."""
    before = dataclasses.replace(model.scorer.truncated)
    runs = {"multiple_choice": multiple_choice, "perplexity": perplexity,
            "generation": generation}
    metrics = runs[task.kind](model, task)
    after = model.scorer.truncated
    metrics["truncated"] = float(after.context - before.context)
    return metrics


def evaluate(model: EvalModel, names: Sequence[str], task_dirs: Sequence[str] = ()
             ) -> dict[str, dict[str, float]]:
    """Metrics per task name (tasks loaded, and so checked, before any is run)."""
    tasks = [load_task(name, task_dirs) for name in names]
    return {task.name: run_task(model, task) for task in tasks}


def multiple_choice(model: EvalModel, task: EvalTask) -> dict[str, float]:
    """acc (highest log-likelihood), acc_norm (per character of the choice, as lm-eval
    normalises) and acc_bytes (per UTF-8 byte)."""
    requests, spans = [], []
    for i, row in enumerate(task.rows):
        context = task.fewshot_prefix(i) + task.render(row, row["_where"])
        choices = row[task.choices]
        spans.append((len(requests), choices, row[task.answer]))
        requests.extend((context, task.choice_prefix + c) for c in choices)
    scores = [ll for ll, _ in model.loglikelihood(requests, task.name)]
    hits: dict[str, list[float]] = {"acc": [], "acc_norm": [], "acc_bytes": []}
    for start, choices, answer in spans:
        ll_K = np.asarray(scores[start:start + len(choices)])
        chars_K = np.asarray([len(c) for c in choices], np.float64)
        bytes_K = np.asarray([len(c.encode("utf-8")) for c in choices], np.float64)
        hits["acc"].append(float(np.argmax(ll_K) == answer))
        hits["acc_norm"].append(float(np.argmax(ll_K / chars_K) == answer))
        hits["acc_bytes"].append(float(np.argmax(ll_K / bytes_K) == answer))
    return _with_stderr(hits, len(spans))


def perplexity(model: EvalModel, task: EvalTask) -> dict[str, float]:
    """bits_per_byte (comparable across tokenizers), nll per token and token perplexity,
    pooled over the documents (rolling windows of the context length, as lm-eval's)."""
    tokenizer, scorer = model.tokenizer, model.scorer
    prefix = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
    windows, owner, n_tokens, n_bytes = [], [], [], []
    for d, doc in enumerate(task.rows):
        tokens = tokenizer.encode(doc["text"])
        for pair in loglik.rolling_windows(tokens, prefix, scorer.max_len):
            windows.append(pair)
            owner.append(d)
        n_tokens.append(len(tokens))
        n_bytes.append(len(doc["text"].encode("utf-8")))
    scored = scorer.loglikelihood(windows, Progress(task.name, len(windows), model.progress))
    nll_D = np.zeros(len(task.rows))
    for d, (ll, _) in zip(owner, scored, strict=True):
        nll_D[d] -= ll
    bpb, bpb_se = stats.ratio_stderr(nll_D / math.log(2.0), n_bytes)
    nll, nll_se = stats.ratio_stderr(nll_D, n_tokens)
    return {"bits_per_byte": bpb, "bits_per_byte_stderr": bpb_se,
            "nll_per_token": nll, "nll_per_token_stderr": nll_se,
            "token_perplexity": math.exp(min(nll, 50.0)),
            "token_perplexity_stderr": math.exp(min(nll, 50.0)) * nll_se,
            "tokens_per_byte": float(np.sum(n_tokens) / np.sum(n_bytes)),
            "n": float(len(task.rows))}


def generation(model: EvalModel, task: EvalTask) -> dict[str, float]:
    """pass@k for each k in the task (the unbiased estimator over n samples per row; n = 1
    and temperature 0 is greedy decoding) under the task's verifier."""
    from llm import rewards
    from llm.sampling.sampler import chat_sampler

    sampler, end_ids = chat_sampler(model.graphdef, model.params, model.tokenizer,
                                    mesh=model.mesh, add_bos=model.add_bos)
    prompts = []
    for row in task.rows:
        text = task.render(row, row["_where"])
        prompts.append(sampler.chat_template([{"role": "user", "content": text}])
                       if task.chat else text)
    progress = Progress(task.name, len(prompts) * task.n, model.progress)
    completions: list[str] = []
    requests = [(p, r) for r in range(task.n) for p in prompts]  # sample r of every row
    for start in range(0, len(requests), model.batch_size):
        chunk = requests[start:start + model.batch_size]
        done = sampler.complete([p for p, _ in chunk], stop=task.stop, stop_token_ids=end_ids,
                                temperature=task.temperature, max_new_tokens=task.max_new_tokens,
                                top_p=1.0, seed=[start + i for i in range(len(chunk))])
        completions.extend(c.text for c in done)
        progress(len(chunk))
    fields = {key: [row.get(key) for row in task.rows] * task.n
              for key in task.rows[0] if key != "_where"}
    fields["answer"] = [row[task.answer] for row in task.rows] * task.n
    correct = rewards.score(task.verifier, [p for p, _ in requests], completions, **fields)
    correct_RN = np.asarray(correct).reshape(task.n, len(task.rows)) > 0.5
    hits = {f"pass@{k}": [stats.pass_at_k(task.n, int(c), k) for c in correct_RN.sum(0)]
            for k in task.k}
    return _with_stderr(hits, len(task.rows))


def _with_stderr(values: dict[str, list[float]], n: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, per_row in values.items():
        out[name], out[f"{name}_stderr"] = stats.mean_stderr(per_row)
    out["n"] = float(n)
    return out
