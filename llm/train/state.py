"""Train state (a plain pytree) and the pure, jitted train and eval steps.

state = {step, params (trainable nnx.State), opt_state, rng, spike: running loss stats}.
Everything that is not trained (a frozen base under LoRA, a reference model) travels
separately as `frozen` and is never donated or updated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from llm.train.task import Task


def new_state(params: Any, tx: optax.GradientTransformation, seed: int) -> dict:
    """Fresh train state around already-sharded params."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": tx.init(params),
        "rng": jax.random.PRNGKey(seed),
        "spike": {"mean": jnp.zeros((), jnp.float32), "var": jnp.zeros((), jnp.float32),
                  "count": jnp.zeros((), jnp.int32), "skipped": jnp.zeros((), jnp.int32)},
    }


def _select(ok: jax.Array, new: Any, old: Any) -> Any:
    return jax.tree.map(lambda a, b: jnp.where(ok, a, b), new, old)


def split_micro_batches(batch: dict, accum: int) -> dict:
    """[B, ...] → [accum, B/accum, ...] keeping each micro-batch's rows contiguous."""
    return {k: v.reshape(accum, v.shape[0] // accum, *v.shape[1:]) for k, v in batch.items()}


def make_train_step(task: Task, graphdef: nnx.GraphDef, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, *, grad_accum: int, use_dropout: bool,
                    skip_spikes: bool, spike_sigma: float, spike_warmup: int,
                    spike_decay: float, inject_nan_step: int = -1,
                    adapter_dropout: bool = False) -> Callable:
    """(state, frozen, batch) → (state, metrics): accumulate, normalise, gate, update."""

    def micro_loss(params, frozen, micro, rng):
        if adapter_dropout:
            from llm import peft

            frozen = peft.with_dropout_rng(frozen, rng)
        model = nnx.merge(graphdef, params, frozen)
        loss_sum, sums = task.loss(model, micro, rng if use_dropout else None)
        return loss_sum, sums

    grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

    def train_step(state, frozen, batch):
        step = state["step"]
        rng = jax.random.fold_in(state["rng"], step)
        micro_batches = split_micro_batches(batch, grad_accum)
        zeros = jax.tree.map(jnp.zeros_like, state["params"])

        def accumulate(carry, xs):
            grads_acc, loss_acc, sums_acc = carry
            micro, index = xs
            (loss_sum, sums), grads = grad_fn(state["params"], frozen, micro,
                                              jax.random.fold_in(rng, index))
            grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
            sums_acc = jax.tree.map(jnp.add, sums_acc, sums)
            return (grads_acc, loss_acc + loss_sum, sums_acc), None

        first = jax.tree.map(lambda x: x[0], micro_batches)
        sums_shape = jax.eval_shape(lambda: micro_loss(state["params"], frozen, first,
                                                       rng)[1])
        sums0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), sums_shape)
        (grads, loss_sum, sums), _ = jax.lax.scan(
            accumulate, (zeros, jnp.zeros((), jnp.float32), sums0),
            (micro_batches, jnp.arange(grad_accum)))
        weight = jnp.maximum(sums["weight"], 1.0)
        loss = loss_sum / weight
        if inject_nan_step >= 0:  # test-only fault injection
            loss = jnp.where(step == inject_nan_step, jnp.nan, loss)
            grads = jax.tree.map(lambda g: jnp.where(step == inject_nan_step, jnp.nan, g),
                                 grads)
        grads = jax.tree.map(lambda g: g / weight, grads)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

        spike = state["spike"]
        std = jnp.sqrt(jnp.maximum(spike["var"], 1e-12))
        is_spike = (skip_spikes & (spike["count"] >= spike_warmup)
                    & (loss > spike["mean"] + spike_sigma * std))
        apply = finite & ~is_spike

        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # Non-finite or spiking steps never reach the parameters or optimiser moments.
        params = _select(apply, params, state["params"])
        opt_state = _select(apply, opt_state, state["opt_state"])

        first_stat = spike["count"] == 0
        mean = jnp.where(first_stat, loss, spike_decay * spike["mean"]
                         + (1 - spike_decay) * loss)
        var = jnp.where(first_stat, 0.0, spike_decay * spike["var"]
                        + (1 - spike_decay) * jnp.square(loss - spike["mean"]))
        new_spike = {
            "mean": jnp.where(apply, mean, spike["mean"]),
            "var": jnp.where(apply, var, spike["var"]),
            "count": spike["count"] + apply.astype(jnp.int32),
            "skipped": spike["skipped"] + (finite & is_spike).astype(jnp.int32),
        }
        new_state = {"step": step + jnp.where(finite, 1, 0).astype(jnp.int32),
                     "params": params, "opt_state": opt_state, "rng": state["rng"],
                     "spike": new_spike}
        metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(step),
                   "finite": finite, "skipped_steps": new_spike["skipped"],
                   "weight": sums["weight"]}
        metrics.update({k: v / weight for k, v in sums.items() if k != "weight"})
        return new_state, metrics

    return train_step


def make_eval_step(task: Task, graphdef: nnx.GraphDef) -> Callable:
    """(params, frozen, batch) → summed eval metrics (no dropout, no grad)."""

    def eval_step(params, frozen, batch):
        model = nnx.merge(graphdef, params, frozen)
        loss_sum, sums = task.loss(model, batch, None)
        return {"loss": loss_sum, **sums}

    return eval_step
