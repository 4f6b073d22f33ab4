"""The AI judge (RL from AI feedback): a model compares two answers against a principle.

The judge reads a fixed template (the principle, the question, answer A, answer B) as one
user turn and is scored by its log-probabilities of the labels "A" and "B" as the first
token of its reply. With q(x, y) = P(A) / (P(A) + P(B)) when x is shown as A and y as B,
the order-averaged probability that x is better is p = (q(x, y) + 1 - q(y, x)) / 2, and the
score s(x, y) = 2p - 1 = q(x, y) - q(y, x) is exactly antisymmetric: whatever bias a judge
has towards the first (or second) position cancels. |s| is the confidence; pairs below
`label.min_confidence` are skipped and counted. Each pair is judged under one principle,
drawn by sha256(seed, prompt id, pair), so a seed fixes every result.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.label.store import Candidate, LabelError

TEMPLATE = (
    "Compare two answers to the question below and pick the better one by this "
    "principle:\n{principle}\n\nQuestion:\n{prompt}\n\nAnswer A:\n{first}\n\n"
    "Answer B:\n{second}\n\nReply with the letter of the better answer, A or B."
)
LABELS = ("A", "B")

# judge prompt texts -> log-probabilities of the labels, logp_N2[:, 0] "A" and [:, 1] "B"
LabelLogprobs = Callable[[list[str]], np.ndarray]


def read_principles(path: str) -> tuple[list[str], str]:
    """The principles of a file and its hash: a JSON list of strings, JSONL rows with a
    'principle', or text with one principle per line ('#' starts a comment line)."""
    file = pathlib.Path(path)
    if not path:
        raise LabelError("--config.label.principles is required for mode=ai (a file of "
                         "principles, one per line)")
    if not file.is_file():
        raise LabelError(f"--config.label.principles={path!r}: no such file")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise LabelError(f"{path}: not UTF-8 text (byte {error.start})") from None
    if file.suffix == ".json":
        try:
            found = json.loads(text)
        except json.JSONDecodeError as error:
            raise LabelError(f"{path}: not valid JSON ({error.msg})") from None
        if not isinstance(found, list) or not all(isinstance(p, str) for p in found):
            raise LabelError(f"{path}: expected a JSON list of principle strings")
    elif file.suffix == ".jsonl":
        found = []
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise LabelError(f"{path} line {number}: not valid JSON ({error.msg})"
                                     ) from None
                if not isinstance(row, dict) or not isinstance(row.get("principle"), str):
                    raise LabelError(f"{path} line {number}: expected {{\"principle\": str}}")
                found.append(row["principle"])
    else:
        found = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    principles = [p.strip() for p in found if p.strip()]
    if not principles:
        raise LabelError(f"{path}: holds no principles (expected one per line)")
    return principles, hashlib.sha256(data).hexdigest()[:16]


def judge_prompt(principle: str, prompt: str, first: str, second: str) -> str:
    """The judge's user turn for one ordering of a pair."""
    return TEMPLATE.format(principle=principle, prompt=prompt, first=first, second=second)


def first_probability(logp_N2: np.ndarray) -> np.ndarray:
    """q: the probability of label A among {A, B}, from their log-probabilities."""
    logp_N2 = np.asarray(logp_N2, np.float64)
    return 1.0 / (1.0 + np.exp(logp_N2[:, 1] - logp_N2[:, 0]))


def order_averaged_scores(label_logprobs: LabelLogprobs, items: Sequence[tuple[str, str, str,
                          str]]) -> np.ndarray:
    """s(x, y) = q(x, y) - q(y, x) for (principle, prompt, x, y) items; in [-1, 1]."""
    texts = [judge_prompt(pr, q, x, y) for pr, q, x, y in items]
    texts += [judge_prompt(pr, q, y, x) for pr, q, x, y in items]
    q_N = first_probability(label_logprobs(texts))
    n = len(items)
    return q_N[:n] - q_N[n:]


def pick_principle(principles: Sequence[str], seed: int, pid: str, pair: tuple[int, int]
                   ) -> str:
    """The principle a pair is judged under (fixed by the seed, the prompt id and the pair)."""
    digest = hashlib.sha256(f"{seed}|{pid}|{pair[0]}|{pair[1]}".encode()).digest()
    return principles[int.from_bytes(digest[:8], "little") % len(principles)]


def judge_records(candidates: Sequence[Candidate], label_logprobs: LabelLogprobs, *,
                  principles: Sequence[str], principles_hash: str, judge: str, seed: int,
                  min_confidence: float, done: set[tuple[str, int, int]] = frozenset(),
                  batch_pairs: int = 16) -> list[dict]:
    """Judgement records for every pair of each prompt's responses not yet in `done`."""
    todo = [(c, (i, j)) for c in candidates
            for i, j in itertools.combinations(range(len(c.responses)), 2)
            if (c.id, i, j) not in done]
    records = []
    for start in range(0, len(todo), batch_pairs):
        chunk = todo[start:start + batch_pairs]
        chosen = [pick_principle(principles, seed, c.id, pair) for c, pair in chunk]
        items = [(pr, c.prompt, c.responses[i], c.responses[j])
                 for pr, (c, (i, j)) in zip(chosen, chunk, strict=True)]
        s_N = order_averaged_scores(label_logprobs, items)
        for principle, (c, (i, j)), s in zip(chosen, chunk, s_N, strict=True):
            common = {"judge": judge, "id": c.id, "principle": principle,
                      "principles_hash": principles_hash, "confidence": round(abs(float(s)), 6),
                      "score": float(s), "pair": [i, j]}
            if c.responses[i] == c.responses[j]:
                records.append({**common, "kind": "skip", "reason": "identical"})
            elif abs(s) < min_confidence:
                records.append({**common, "kind": "skip", "reason": "low_confidence"})
            else:
                better, worse = (i, j) if s > 0 else (j, i)
                records.append({**common, "kind": "pair", "chosen": better, "rejected": worse})
        print(f"ai judge: {min(start + batch_pairs, len(todo))}/{len(todo)} pairs",
              file=sys.stderr, flush=True)
    return records


def model_hash(params: Any) -> str:
    """The first 12 hex digits of sha256 over every parameter's path, shape and bytes."""
    digest = hashlib.sha256()
    for path, value in sorted(nnx.to_flat_state(params), key=lambda kv: str(kv[0])):
        array = np.asarray(jax.device_get(value[...]))
        digest.update(f"{'/'.join(map(str, path))}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:12]


@functools.partial(jax.jit, static_argnums=0)
def _label_logprobs(graphdef, params, tokens_BT, last_B, label_ids_2):
    model = nnx.merge(graphdef, params)
    h_BTD, _ = model.hidden(tokens_BT)
    h_B1D = jnp.take_along_axis(h_BTD, last_B[:, None, None], axis=1)
    logp_BV = jax.nn.log_softmax(model.logits(h_B1D)[:, 0], axis=-1)
    return logp_BV[:, label_ids_2]


class ModelJudge:
    """Label log-probabilities from a model: `render(text) -> ids` is its chat turn."""

    def __init__(self, graphdef: Any, params: Any, render: Callable[[str], list[int]],
                 label_ids: tuple[int, int], batch_size: int = 8):
        if label_ids[0] == label_ids[1]:
            raise LabelError(f"the judge's tokenizer gives one token {label_ids[0]} for both "
                             "labels 'A' and 'B'")
        self.graphdef, self.params, self.render = graphdef, params, render
        self.label_ids_2 = jnp.asarray(label_ids, jnp.int32)
        self.batch_size = batch_size
        self.max_len = nnx.merge(graphdef, params).cfg.max_seq_len

    def __call__(self, texts: list[str]) -> np.ndarray:
        """logp_N2 of 'A' and 'B' as the first reply token after each judge prompt."""
        ids = [self.render(t) for t in texts]
        longest = max(range(len(ids)), key=lambda n: len(ids[n]))
        if len(ids[longest]) > self.max_len:
            raise LabelError(f"a judge prompt is {len(ids[longest])} tokens and the judge reads "
                             f"at most {self.max_len} (its model.max_seq_len): shorten the "
                             f"answers (max_new_tokens) or use a judge with a longer context; "
                             f"the prompt begins {texts[longest][:200]!r}")
        width = -(-max(map(len, ids)) // 64) * 64  # one compile per 64-token bucket
        out = []
        for start in range(0, len(ids), self.batch_size):
            rows = ids[start:start + self.batch_size]
            tokens_BT = np.zeros((self.batch_size, width), np.int32)
            last_B = np.zeros(self.batch_size, np.int32)
            for b, row in enumerate(rows):
                tokens_BT[b, :len(row)] = row
                last_B[b] = len(row) - 1
            logp_B2 = _label_logprobs(self.graphdef, self.params, tokens_BT, last_B,
                                      self.label_ids_2)
            out.append(np.asarray(logp_B2)[:len(rows)])
        return np.concatenate(out)


def load_judge(init_from: str, batch_size: int = 8) -> tuple[ModelJudge, str]:
    """The judge model of a workdir, `checkpoints/<step>` or `hf:DIR`, and its hash."""
    from llm import loading
    from llm.checkpoint import CheckpointError
    from llm.data import chat
    from llm.data.tokenizer import Tokenizer

    if not init_from:
        raise LabelError("--config.label.judge is required for mode=ai (a workdir, "
                         "checkpoints/<step> or hf:DIR)")
    try:
        loaded = loading.load_model(init_from)
    except CheckpointError as error:
        raise LabelError(f"--config.label.judge: {error}") from None
    if loaded.tokenizer_dir is None:
        raise LabelError(f"--config.label.judge={init_from!r}: has no tokenizer/ to read "
                         "the judge prompt with")
    tok = Tokenizer.load(loaded.tokenizer_dir)

    def render(text: str) -> list[int]:
        return chat.render_messages(tok, [{"role": "user", "content": text}], True)[0]

    label_ids = tuple(tok.encode(label)[-1] for label in LABELS)
    judge = ModelJudge(loaded.graphdef, loaded.params, render, label_ids, batch_size)
    return judge, model_hash(loaded.params)
