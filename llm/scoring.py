"""Reward-model scoring: the scalar score head, the score at each sequence's last real
token, and a batched host-side scorer of `prompt`/`response` rows that the reward task's
evaluation, `scripts/score.py`, PPO and the labelling stage share.

A reward model is the Transformer with `score_head` (a [D, 1] Dense, no bias, as Hugging
Face's `*ForSequenceClassification.score`), read at the last token whose segment id is
non-zero (the chat row ends in EOS, so that is the EOS position).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llm.model import Dense, Transformer

HEAD = "score_head"
HEAD_SEED = 0


def add_score_head(model: Transformer) -> Transformer:
    """The model with a fresh scalar `score_head` (small init, so scores start near zero)."""
    cfg = model.cfg
    setattr(model, HEAD, Dense(cfg.d_model, 1, ("embed", None), cfg,
                               nnx.Rngs(params=HEAD_SEED), std=1.0 / cfg.d_model))
    return model


def has_score_head(model) -> bool:
    """Whether `model` carries a score head."""
    return getattr(model, HEAD, None) is not None


def last_token_index(segment_ids_BT: jax.Array) -> jax.Array:
    """Index of each row's last real (non-padding) token, idx_B."""
    return jnp.maximum(jnp.sum(segment_ids_BT > 0, axis=-1) - 1, 0)


def sequence_scores(model, tokens_BT: jax.Array, positions_BT: jax.Array,
                    segment_ids_BT: jax.Array, dropout_rng: jax.Array | None = None
                    ) -> jax.Array:
    """Scalar scores_B (float32) read at each row's last real token."""
    h_BTD, _ = model.hidden(tokens_BT, positions_BT, segment_ids_BT, dropout_rng=dropout_rng)
    idx_B = last_token_index(segment_ids_BT)
    h_BD = jnp.take_along_axis(h_BTD, idx_B[:, None, None], axis=1)[:, 0]
    return getattr(model, HEAD)(h_BD)[..., 0].astype(jnp.float32)


def check_reward_model(init_from: str) -> None:
    """One clear error when `init_from` holds no score head (it is not a reward model)."""
    import json
    import pathlib

    from llm import loading

    if init_from.startswith("hf:"):
        path = pathlib.Path(init_from[3:]) / "config.json"
        try:
            archs = json.loads(path.read_text()).get("architectures") or []
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"init_from={init_from}: cannot read {path} ({error})") from None
        if not any(a.endswith("ForSequenceClassification") for a in archs):
            raise ValueError(f"init_from={init_from}: {path} declares architectures={archs}, "
                             "no *ForSequenceClassification score head: not a reward model")
        return
    config_file, config = loading.step_config(loading.resolve_step_dir(init_from))
    if config.get("task") != "reward":
        raise ValueError(f"init_from={init_from}: {config_file} is a {config.get('task')!r} "
                         "run with no score head; score with a reward model "
                         "(scripts/train.py --config=configs/reward.py)")


@dataclasses.dataclass
class Scorer:
    """Scores chat rows with a reward model, in fixed-shape batches (one compile)."""

    graphdef: nnx.GraphDef
    params: object
    tokenizer: object
    seq_len: int
    batch_size: int = 16

    def __post_init__(self):
        self._score = jax.jit(lambda p, t, pos, seg: sequence_scores(
            nnx.merge(self.graphdef, p), t, pos, seg))

    @classmethod
    def load(cls, init_from: str, seq_len: int, batch_size: int = 16, mesh=None,
             rules=None) -> Scorer:
        """A scorer over the reward model at `init_from` (workdir, checkpoint or hf:DIR)."""
        from llm.data.tokenizer import Tokenizer
        from llm.loading import load_model

        check_reward_model(init_from)
        loaded = load_model(init_from, mesh, rules, build=add_score_head)
        if loaded.tokenizer_dir is None:
            raise ValueError(f"init_from={init_from}: no tokenizer/ directory beside it")
        return cls(loaded.graphdef, loaded.params, Tokenizer.load(loaded.tokenizer_dir),
                   seq_len, batch_size)

    def encode(self, prompt: str, response: str) -> list[int]:
        """Ids of one chat row (the user prompt, then the assistant response)."""
        from llm.data import chat

        return chat.render_pair(self.tokenizer, prompt, response).ids

    def score_ids(self, rows: Sequence[Sequence[int]]) -> np.ndarray:
        """Scores of token-id rows (each at most seq_len long), float32 [len(rows)]."""
        out = np.zeros(len(rows), np.float32)
        pad = self.tokenizer.pad_id if self.tokenizer.pad_id is not None else 0
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            tokens = np.full((self.batch_size, self.seq_len), pad, np.int32)
            segments = np.zeros_like(tokens)
            for i, ids in enumerate(chunk):
                if len(ids) > self.seq_len:
                    raise ValueError(f"row {start + i}: {len(ids)} tokens exceed "
                                     f"seq_len={self.seq_len}")
                tokens[i, :len(ids)] = ids
                segments[i, :len(ids)] = 1
            positions = np.broadcast_to(np.arange(self.seq_len, dtype=np.int32),
                                        tokens.shape)
            scores = np.asarray(self._score(self.params, tokens, positions, segments))
            out[start:start + len(chunk)] = scores[:len(chunk)]
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> list[float]:
        """One score per (prompt, response): what PPO and the labelling stage call."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        return [float(s) for s in self.score_ids(
            [self.encode(p, r) for p, r in zip(prompts, responses, strict=True)])]


def read_rows(path: str) -> list[dict]:
    """`prompt`/`response` or `prompt`/`chosen`/`rejected` rows of a JSONL file; a bad line
    is one ValueError naming the file, the line and the key."""
    import json

    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError as error:
        raise ValueError(f"--config.input_file={path!r}: {error.strerror}") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        keys = ("response",) if isinstance(row, dict) and "response" in row else (
            "chosen", "rejected")
        for key in ("prompt", *keys):
            if not isinstance(row, dict) or not isinstance(row.get(key), str):
                raise ValueError(f"{path} line {number}: expected a string {key!r} (rows are "
                                 "prompt/response or prompt/chosen/rejected)")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no rows (the file is empty)")
    return rows


def score_rows(scorer: Scorer, rows: list[dict]) -> list[dict]:
    """Each row with `score` (prompt/response) or `chosen_score` and `rejected_score`."""
    texts = []
    for row in rows:
        keys = ("response",) if "response" in row else ("chosen", "rejected")
        texts += [(row["prompt"], row[key]) for key in keys]
    scores = iter(scorer.score([p for p, _ in texts], [r for _, r in texts]))
    out = []
    for row in rows:
        if "response" in row:
            out.append({**row, "score": next(scores)})
        else:
            out.append({**row, "chosen_score": next(scores), "rejected_score": next(scores)})
    return out
