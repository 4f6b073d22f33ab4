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

        loaded = load_model(init_from, mesh, rules, build=add_score_head)
        if not has_score_head(nnx.merge(loaded.graphdef, loaded.params)):
            raise ValueError(f"init_from={init_from}: no score head (not a reward model)")
        if loaded.tokenizer_dir is None:
            raise ValueError(f"init_from={init_from}: no tokenizer/ directory beside it")
        return cls(loaded.graphdef, loaded.params, Tokenizer.load(loaded.tokenizer_dir),
                   seq_len, batch_size)

    def encode(self, prompt: str, response: str) -> list[int]:
        """Ids of one chat row (the user prompt, then the assistant response)."""
        from llm.data import chat

        return chat.render_prompt(self.tokenizer, prompt) + chat.render_response(
            self.tokenizer, response)

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
