"""Train state (a plain pytree) and the pure, jitted train and eval steps.

state = {step, params (trainable nnx.State), opt_state, rng, spike: the update guard's
running loss statistics}. Everything that is not trained (a frozen base under LoRA) travels
separately as `frozen`, the side models as `side`; neither is donated or updated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llm.train.guard import UpdateGuard
from llm.train.task import Task


def new_state(params: Any, guard: UpdateGuard, seed: int) -> dict:
    """Fresh train state around already-sharded params."""
    return {"step": jnp.zeros((), jnp.int32), "params": params,
            "opt_state": guard.tx.init(params), "rng": jax.random.PRNGKey(seed),
            "spike": guard.init()}


def prepare_rng(state_rng: jax.Array, step: int) -> jax.Array:
    """The rng of `Task.prepare` for the batch whose first update is step `step` + 1:
    `fold_in(split(state.rng)[1], step)`, apart from the train steps' `fold_in(rng, step)`."""
    return jax.random.fold_in(jax.random.split(state_rng)[1], step)


def split_micro_batches(batch: dict, accum: int) -> dict:
    """[B, ...] → [accum, B/accum, ...] keeping each micro-batch's rows contiguous."""
    for key, value in batch.items():  # at trace time: one clear error, not a reshape's
        if value.ndim == 0 or value.shape[0] % accum:
            raise ValueError(f"batch[{key!r}] has shape {tuple(value.shape)}: every array of "
                             f"an update needs a leading row axis that "
                             f"optim.grad_accum={accum} divides")
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


def merge_side(graphdefs: dict[str, nnx.GraphDef], side: dict[str, tuple]) -> dict:
    """Side models as modules (inside a jitted function)."""
    return {name: nnx.merge(graphdefs[name], *states) for name, states in side.items()}


def make_train_step(task: Task, graphdef: nnx.GraphDef, side_graphdefs: dict,
                    guard: UpdateGuard, schedule: optax.Schedule, *, grad_accum: int,
                    use_dropout: bool, adapter_dropout: bool = False) -> Callable:
    """(state, frozen, side, batch, index) → (state, metrics): one optimiser update on
    minibatch `index` of a prepared batch, accumulated over micro-batches, then gated."""

    def micro_loss(params, frozen, side, micro, rng):
        if adapter_dropout:
            from llm.peft import methods as peft

            frozen = peft.with_dropout_rng(frozen, rng)
        model = nnx.merge(graphdef, params, frozen)
        return task.loss(model, merge_side(side_graphdefs, side), micro,
                         rng if use_dropout else None)

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state, frozen, side, batch, index):
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        micro_batches = split_micro_batches(task.minibatch(batch, index), grad_accum)
        first = jax.tree.map(lambda x: x[0], micro_batches)
        sums_shape = jax.eval_shape(
            lambda: micro_loss(state["params"], frozen, side, first, rng)[1])

        def accumulate(carry, xs):
            grads_acc, loss_acc, sums_acc = carry
            micro, micro_index = xs
            (loss_sum, sums), grads = grad_fn(state["params"], frozen, side, micro,
                                              jax.random.fold_in(rng, micro_index))
            return (jax.tree.map(jnp.add, grads_acc, grads), loss_acc + loss_sum,
                    jax.tree.map(jnp.add, sums_acc, sums)), None

        zeros = (jax.tree.map(jnp.zeros_like, state["params"]), jnp.zeros((), jnp.float32),
                 jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape))
        (grads, loss_sum, sums), _ = jax.lax.scan(
            accumulate, zeros, (micro_batches, jnp.arange(grad_accum)))
        weight = jnp.maximum(sums["weight"], 1.0)
        loss = loss_sum / weight
        grads = jax.tree.map(lambda g: g / weight, grads)
        params, opt_state, spike, finite, grad_norm = guard.apply(
            state["params"], state["opt_state"], state["spike"], grads, loss)
        # No target token in the whole update (every row masked out): there is nothing to
        # learn, yet weight decay and the moments would still move the weights. Skip it; the
        # loop reports it.
        empty = sums["weight"] == 0
        params, opt_state, spike = jax.tree.map(
            lambda old, new: jnp.where(empty, old, new),
            (state["params"], state["opt_state"], state["spike"]), (params, opt_state, spike))
        new_state = {"step": step + finite.astype(jnp.int32), "params": params,
                     "opt_state": opt_state, "rng": state["rng"], "spike": spike}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step),
                   "finite": finite, "skipped_steps": spike["skipped"],
                   "weight": sums["weight"], "empty_batch": empty}
        metrics.update({k: v / weight for k, v in sums.items() if k != "weight"})
        return new_state, metrics

    return train_step


def make_eval_step(task: Task, graphdef: nnx.GraphDef, side_graphdefs: dict) -> Callable:
    """(params, frozen, side, batch) → summed eval metrics (no dropout, no grad)."""

    def eval_step(params, frozen, side, batch):
        model = nnx.merge(graphdef, params, frozen)
        loss_sum, sums = task.eval_loss(model, merge_side(side_graphdefs, side), batch)
        return {"loss": loss_sum, **sums}

    return eval_step
