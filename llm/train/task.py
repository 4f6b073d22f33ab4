"""The `Task` interface: what an algorithm supplies to the one training loop.

A task owns its data, what is trainable, an optional no-grad `prepare` (reference
log-probs, rollouts and rewards) and its loss. The loop owns everything else.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator
from typing import Any

import jax
import ml_collections
from flax import nnx

from llm.model import ModelConfig, Transformer


@dataclasses.dataclass
class DataSource:
    """A checkpointable stream of process-local batches (dicts of numpy arrays)."""

    make_iterator: Callable[[], Iterator[dict]]  # grain DatasetIterator (get/set_state)
    batches_per_epoch: int | None = None
    tokenizer_dir: pathlib.Path | None = None
    vocab_size: int | None = None


class Task:
    """Base task: full-parameter training of a Transformer with a task-specific loss."""

    name = "base"
    # Keys of a batch that count as trained tokens for throughput (B * T of this array).
    tokens_key = "tokens"

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def check(self) -> None:
        """Validate the task's own config keys (before any data is prepared)."""

    def datasets(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 workdir: pathlib.Path) -> tuple[DataSource, DataSource | None]:
        """Training and (optional) evaluation streams for this process."""
        raise NotImplementedError

    def build_model(self, model_cfg: ModelConfig, rngs: nnx.Rngs) -> Transformer:
        """The module to train, before `peft.*` adapters (a reward task adds its head)."""
        return Transformer(model_cfg, rngs)

    def trainable(self) -> Any:
        """nnx filter of what gets gradients and optimiser state (from `peft.method`)."""
        from llm import peft

        return peft.trainable_filter(self.config.peft)

    def prepare(self, model: Transformer, batch: dict, rng: jax.Array) -> dict:
        """No-grad host-side step before the update (rollouts, reference log-probs)."""
        return batch

    def loss(self, model: Transformer, batch: dict, rng: jax.Array | None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(sum of loss over units, metric sums incl. 'weight' = the unit count); pure."""
        raise NotImplementedError

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed eval metrics into reported ones (loss, perplexity, ...)."""
        weight = max(sums.get("weight", 0.0), 1e-9)
        return {f"eval_{k}": v / weight for k, v in sums.items() if k != "weight"}

    def evaluate(self, model: Transformer, step: int) -> dict[str, float]:
        """Optional generation-based evaluation (e.g. exact-answer accuracy)."""
        return {}
