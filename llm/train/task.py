"""The `Task` interface: what an algorithm supplies to the one training loop.

Per host batch the loop calls, in order:

    batch = task.prepare(models, host_batch, rng)      # host code, no grad; sees strings
    for index in range(task.num_updates()):            # one optimiser update (= step) each
        minibatch = task.minibatch(batch, index)       # traced inside the jitted step
        loss_sum, sums = task.loss(model, side, minibatch, rng)

`prepare`'s rng is `prepare_rng(state.rng, step)` for the step of the batch's first update
(llm/train/state.py), a stream apart from the training step's `fold_in(state.rng, step)`.
A prepared batch that feeds several updates is checkpointed with the index of its next
minibatch, so a run stopped between two of its updates resumes bit for bit.

Side models (`side_models`) are frozen: the reference is the policy's starting weights (a
second copy under full fine-tuning; under LoRA / QLoRA / prefix the base itself with the
adapters switched off, so the weights are held once); others are loaded from `init_from`.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from llm.model import ModelConfig, Transformer


@dataclasses.dataclass
class DataSource:
    """A checkpointable stream of process-local batches (dicts of numpy arrays / strings)."""

    make_iterator: Callable[[], Iterator[dict]]  # grain DatasetIterator (get/set_state)
    batches_per_epoch: int | None = None
    tokenizer_dir: pathlib.Path | None = None
    vocab_size: int | None = None
    # The iterator's state is the same on every process and counts global batches (the
    # `llm/data/loaders.py` pipelines), so a checkpoint resumes with another process count;
    # otherwise such a restart is refused.
    reshardable: bool = False


@dataclasses.dataclass(frozen=True)
class SideModel:
    """A frozen model beside the policy: the reference (no `init_from`) or a loaded one."""

    init_from: str = ""  # "" = the policy's own starting weights (a frozen reference)
    build: Callable[[Transformer], nnx.Module] | None = None  # its heads (a reward model's)


REFERENCE = SideModel()


@dataclasses.dataclass
class Models:
    """The policy and the side models as arrays, for host code (`prepare`, `evaluate`).

    `side[name]` is a tuple of states that `nnx.merge(side_graphdefs[name], *states)` turns
    back into a module; under PEFT the reference shares the policy's frozen arrays.
    """

    graphdef: nnx.GraphDef
    params: Any
    frozen: Any
    side_graphdefs: dict[str, nnx.GraphDef]
    side: dict[str, tuple]
    mesh: jax.sharding.Mesh
    model_cfg: ModelConfig

    def policy(self) -> nnx.Module:
        """The policy as a module (a merge: its arrays are shared, not copied)."""
        return nnx.merge(self.graphdef, self.params, self.frozen)

    def get(self, name: str) -> nnx.Module:
        """Side model `name` as a module."""
        return nnx.merge(self.side_graphdefs[name], *self.side[name])

    def held_bytes(self) -> int:
        """Bytes of device arrays held for the policy and side models, each array once."""
        arrays = {id(x): x for tree in (self.params, self.frozen, *self.side.values())
                  for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)}
        return sum(x.size * x.dtype.itemsize for x in arrays.values())


class Task:
    """Base task: full-parameter training of a Transformer with a task-specific loss."""

    name = "base"
    tokens_key = "tokens"  # the batch array whose size counts trained tokens by default
    fresh: tuple[str, ...] = ()  # modules `build` adds, left freshly initialised by init_from

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.model_cfg: ModelConfig | None = None  # set by the loop once it is resolved

    def check(self) -> None:
        """Validate the task's own config keys (before any data is prepared)."""

    def datasets(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                 workdir: pathlib.Path) -> tuple[DataSource, DataSource | None]:
        """Training and (optional) evaluation streams for this process."""
        raise NotImplementedError

    def build(self, model: Transformer) -> nnx.Module:
        """The module to train, before `peft.*` adapters: heads go on here (declare `fresh`)."""
        return model

    def initialise(self, model: nnx.Module, mesh: jax.sharding.Mesh, rules: dict) -> None:
        """Fill fresh modules that start from a checkpoint of their own, in place, once the
        model is built and `init_from` loaded (PPO's value model from the reward model)."""

    def trainable(self) -> Any:
        """nnx filter of what gets gradients and optimiser state (from `peft.method`)."""
        from llm.peft import methods as peft

        trainable = peft.trainable_filter(self.config.peft)
        if self.config.peft.method == "none" or not self.fresh:
            return trainable
        return nnx.Any(trainable, *(nnx.PathContains(name) for name in self.fresh))

    def param_groups(self) -> dict[str, tuple[Callable[[str], bool], float]]:
        """Optimiser groups: name → (predicate on a 'a/b/c' parameter path, lr multiplier)."""
        return {}

    def side_models(self) -> dict[str, SideModel]:
        """Frozen models the task reads by name (e.g. {'reference': REFERENCE})."""
        return {}

    def num_updates(self) -> int:
        """Optimiser updates per prepared batch (PPO epochs x minibatches; GRPO iterations)."""
        return 1

    def prepare(self, models: Models, host_batch: dict, rng: jax.Array) -> dict:
        """No-grad host step before the updates (rollouts, rewards, reference log-probs).

        Gets this process's rows, string fields included; returns arrays whose leading axis
        is the batch (numpy rows of this process, or global jax Arrays); strings are dropped.
        """
        return host_batch

    def minibatch(self, batch: dict, index: jax.Array) -> dict:
        """The rows of update `index` (traced; e.g. a dynamic slice of a shuffled batch)."""
        return batch

    def loss(self, model: nnx.Module, side: Mapping[str, nnx.Module], batch: dict,
             rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
        """(sum of loss over units, metric sums incl. 'weight' = the unit count); pure."""
        raise NotImplementedError

    def count(self, batch: Mapping[str, Any]) -> tuple[int, float]:
        """(tokens trained, FLOPs spent) over all updates of one prepared (global) batch."""
        tokens = math.prod(np.shape(batch[self.tokens_key])) * self.num_updates()
        return tokens, tokens * self.flops_per_token()

    def flops_per_token(self) -> float:
        """Training FLOPs per token of the policy (forward + backward)."""
        from llm import metrics

        return metrics.train_flops_per_token(self.model_cfg, self.config.seq_len)

    def prepare_eval(self, models: Models, host_batch: dict) -> dict:
        """A held-out batch made ready for `eval_loss` (an RL task would sample here)."""
        return host_batch

    def eval_loss(self, model: nnx.Module, side: Mapping[str, nnx.Module], batch: dict
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Held-out (loss sum, metric sums), no dropout; by default the training loss."""
        return self.loss(model, side, batch, None)

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Turn summed eval metrics into reported ones (loss, perplexity, ...)."""
        weight = max(sums.get("weight", 0.0), 1e-9)
        return {f"eval_{k}": v / weight for k, v in sums.items() if k != "weight"}

    def evaluate(self, models: Models, step: int) -> dict[str, float]:
        """The task's own held-out metrics (e.g. answer accuracy of sampled completions)."""
        return {}

    # Task state (an adaptive KL coefficient, running reward statistics): JSON values,
    # checkpointed with every step and restored exactly. A task that keeps state sees each
    # step's metrics, in order, before its next `prepare`.
    def state_dict(self) -> dict[str, Any]:
        """The task's checkpointed state (JSON: numbers, strings, lists, dicts)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""

    def observe(self, step: int, metrics: dict[str, float]) -> None:
        """Update the task state from step `step`'s metrics (host floats)."""

    @property
    def has_state(self) -> bool:
        """Whether the task overrides `observe` (the loop then reads every step's metrics)."""
        return type(self).observe is not Task.observe
