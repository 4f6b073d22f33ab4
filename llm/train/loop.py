"""The one training loop: every task (pretrain, SFT, reward, DPO, PPO, GRPO) runs here.

Read top to bottom: workdir → mesh → task and data → model, side models and optimiser (born
sharded, or restored) → jitted steps → loop → final save. In the loop a host batch is
prepared once (`Task.prepare`) and feeds `Task.num_updates()` optimiser updates; a step is
one update. Step N+1 is dispatched before step N's metrics are read.
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import xxhash
from flax import nnx

from llm import config as config_lib
from llm import metrics as metrics_lib
from llm import optim, sharding
from llm.checkpoint import Checkpointer
from llm.loading import build_model
from llm.train import checks
from llm.train import state as state_lib
from llm.train import workdir as workdir_lib
from llm.train.guard import UpdateGuard
from llm.train.report import StepReporter, due
from llm.train.task import Models, Task
from llm.train.workdir import TrainingError

__all__ = ["TrainingError", "batch_hash", "train"]


def batch_hash(batch: dict) -> str:
    """Stable hash of a batch's array contents (xxh3, key order fixed)."""
    h = xxhash.xxh3_64()
    for key in sorted(batch):
        value = np.asarray(batch[key])
        if value.dtype.kind in "iufb":
            h.update(key.encode())
            h.update(np.ascontiguousarray(value).tobytes())
    return h.hexdigest()


class _StopFlag:
    """SIGTERM/SIGINT set a flag that the loop checks at each step boundary."""

    def __init__(self):
        self.raised = False
        self._previous = {}

    def install(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        print(f"received signal {signum}: saving a checkpoint at the next step boundary",
              flush=True)
        self.raised = True

    def agreed(self) -> bool:
        """True on every process if any process was signalled (so all stop together)."""
        if jax.process_count() == 1:
            return self.raised
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.array([self.raised]))
        return bool(np.any(flags))

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(config: ml_collections.ConfigDict, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) training in `config.workdir`; returns the final metrics."""
    # ---------------------------------------------------------------- workdir and config
    workdir = workdir_lib.make_workdir(config)
    sharding.maybe_initialize_distributed()
    is_primary = jax.process_index() == 0
    if task is None:
        from llm.train import get_task

        task = get_task(config.task)(config)
    checks.check_run_settings(config)
    task.check()

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    rules = {k: (v or None) for k, v in config.mesh.rules.items()}
    checks.check_loop_settings(config, mesh)

    # ---------------------------------------------------------------- data
    train_data, eval_data = task.datasets(config, mesh, workdir)
    model_cfg = checks.model_config(config, train_data.vocab_size)
    if model_cfg.vocab_size != config.model.vocab_size:
        print(f"model.vocab_size {config.model.vocab_size} -> {model_cfg.vocab_size} "
              "(the tokenizer's)")
    task.model_cfg = model_cfg
    total_steps = int(config.total_steps)
    if config.num_epochs and train_data.batches_per_epoch:
        total_steps = int(config.num_epochs) * train_data.batches_per_epoch * task.num_updates()
    if total_steps <= 0:
        raise config_lib.ConfigError(f"total_steps={total_steps}: expected > 0")
    if eval_data is None and config.eval.every_steps > 0 and config.eval.patience > 0:
        raise config_lib.ConfigError(f"eval.patience={config.eval.patience}: early stopping "
                                     "needs a validation loss, and this run has no validation "
                                     "split (see above)")
    if int(config.optim.warmup_steps) > total_steps:
        print(f"optim.warmup_steps={config.optim.warmup_steps} exceeds the run's "
              f"{total_steps} steps: the learning rate warms up over all of them", flush=True)
    run_config = json.loads(config_lib.to_json(config))
    run_config["resolved"] = {  # what the loop worked out; the user's keys stay as given
        "model": dataclasses.asdict(model_cfg), "total_steps": total_steps,
        "tokenizer": str(train_data.tokenizer_dir) if train_data.tokenizer_dir else ""}
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    workdir_lib.check_same_run(workdir, run_config, checkpointer)
    if is_primary:
        workdir_lib.copy_tokenizer(train_data.tokenizer_dir, workdir,
                                   bool(checkpointer.steps()))

    # ---------------------------------------------------------------- model and optimiser
    model = build_model(model_cfg, config.peft, mesh, rules, seed=config.seed,
                        init_from=config.init_from, build=task.build, fresh=task.fresh,
                        data_tokenizer_dir=train_data.tokenizer_dir)
    graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
    del model
    side_graphdefs, side = _side_models(task, graphdef, params, frozen, model_cfg, config,
                                        mesh, rules)
    tx, schedule = optim.make_optimizer(config.optim, total_steps, task.param_groups())
    guard = UpdateGuard.from_config(tx, config.train)
    state = jax.jit(lambda p: state_lib.new_state(p, guard, config.seed))(params)
    del params  # the state holds them now (its step donates them)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)

    # ---------------------------------------------------------------- checkpoint / resume
    train_iter = train_data.make_iterator()
    loop_state: dict[str, Any] = {"best_eval_loss": None, "evals_since_best": 0,
                                  "tokens_seen": 0}
    if config.peft.method != "none":  # adapters record the base they were trained on
        from llm.peft import lora

        loop_state["base_hash"] = lora.base_hash(frozen)
    prepared = None  # (batch, index of its next update, digest, tokens, flops)
    start_step = 0
    restored = checkpointer.restore_latest(state, state_shardings, train_iter, mesh) \
        if checkpointer.steps() else None
    if restored is not None:
        base_hash = loop_state.get("base_hash")
        start_step, state, loop_state, prepared_batch = restored
        if base_hash != loop_state.get("base_hash"):
            raise TrainingError(
                f"{workdir}: the adapters were trained on a different base than "
                f"init_from={config.init_from!r} gives now; restore that base or use a new "
                "workdir")
        task.load_state_dict(loop_state.pop("task", {}))
        if prepared_batch is not None:
            saved = loop_state.pop("prepared")
            prepared = (prepared_batch, saved["index"], saved["digest"], saved["tokens"],
                        saved["flops"])
        print(f"resumed from {workdir / 'checkpoints' / str(start_step)}", flush=True)
    elif checkpointer.steps():
        print("no readable checkpoint; starting from scratch", flush=True)
    if is_primary:
        workdir_lib.write_run_config(workdir, run_config)
    writer = metrics_lib.MetricsWriter(workdir, start_step, config.log, is_primary, run_config)

    def save(step: int) -> None:
        extra = {"task": task.state_dict()}
        batch = None
        if prepared is not None:  # between two updates of one batch: keep it and its place
            batch, index, digest, tokens, flops = prepared
            extra["prepared"] = {"index": index, "digest": digest, "tokens": tokens,
                                 "flops": flops}
        checkpointer.save(step, state, train_iter, {**loop_state, **extra}, run_config,
                          prepared=batch)

    # ---------------------------------------------------------------- jitted steps
    use_dropout = any(getattr(model_cfg, k) > 0 for k in ("embed_dropout", "attn_dropout",
                                                           "resid_dropout"))
    step_fn = state_lib.make_train_step(
        task, graphdef, side_graphdefs, guard, schedule,
        grad_accum=int(config.optim.grad_accum), use_dropout=use_dropout,
        adapter_dropout=config.peft.method in ("lora", "qlora") and config.peft.dropout > 0)
    replicated = sharding.replicated(mesh)
    train_step = jax.jit(step_fn, out_shardings=(state_shardings, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(state_lib.make_eval_step(task, graphdef, side_graphdefs),
                        out_shardings=replicated)

    def models() -> Models:
        return Models(graphdef, state["params"], frozen, side_graphdefs, side, mesh, model_cfg)

    def evaluate_all(step: int) -> dict[str, float]:
        """Held-out loss through the task (when there is a validation split) plus the
        task's own evaluation, printed."""
        metrics = {} if eval_data is None else _held_out(eval_step, models(), eval_data,
                                                         mesh, config, task)
        metrics.update(task.evaluate(models(), step))
        if metrics:
            print(" | ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        return metrics

    # ---------------------------------------------------------------- loop
    stop = _StopFlag()
    stop.install()
    reporter = StepReporter(writer, config.log.every_steps, total_steps, start_step,
                            task.observe if task.has_state else None)
    final_metrics = reporter.final
    num_updates = task.num_updates()
    stopped_early = False
    step = last_saved = start_step
    try:
        while step < total_steps:
            if prepared is None:
                host_batch = next(train_iter, None)
                if host_batch is None:
                    print("training data exhausted", flush=True)
                    break
                if task.has_state:
                    reporter.flush()  # the task state has seen every step before `prepare`
                digest = batch_hash(host_batch)
                batch = task.prepare(models(), host_batch,
                                     state_lib.prepare_rng(state["rng"], step))
                batch = _place(batch, mesh)
                tokens, flops = task.count(batch)
                prepared = (batch, 0, digest, tokens, flops)
            batch, index, digest, tokens, flops = prepared
            state, device_metrics = train_step(state, frozen, side, batch,
                                               np.int32(index))
            step += 1
            prepared = None if index + 1 == num_updates else (batch, index + 1, digest,
                                                                tokens, flops)
            reporter.submit(step, device_metrics, digest, tokens / num_updates,
                            flops / num_updates)
            at_checkpoint = due(step, config.checkpoint.every_steps, total_steps)
            at_eval = due(step, config.eval.every_steps, total_steps)
            preempted = stop.agreed()
            if at_checkpoint or at_eval or preempted:
                reporter.flush()
            if at_eval:
                eval_metrics = evaluate_all(step)
                writer.write(step, eval_metrics)
                final_metrics.update(eval_metrics)
                stopped_early = _early_stop(loop_state, eval_metrics, config)
            loop_state["tokens_seen"] += tokens / num_updates
            if at_checkpoint or preempted or stopped_early:
                save(step)
                last_saved = step
            if preempted:
                print(f"stopping at step {step} after a signal; checkpoint saved", flush=True)
                break
            if stopped_early:
                print(f"early stopping at step {step}: no eval improvement in "
                      f"{config.eval.patience} evaluations", flush=True)
                break
        if step == start_step and step >= total_steps:
            # The same command rerun after the run finished: nothing to train, but callers
            # (scripts, sweeps) still get the finished state's evaluation.
            print(f"run already complete at step {step} of {total_steps}; evaluating it",
                  flush=True)
            if config.eval.every_steps > 0:
                final_metrics.update(evaluate_all(step))
        reporter.flush()
        if step > last_saved:
            save(step)
    finally:
        stop.restore()
        checkpointer.close()
        writer.close()
    final_metrics["step"] = step
    return final_metrics


def _side_models(task: Task, graphdef, params, frozen, model_cfg, config, mesh, rules
                 ) -> tuple[dict, dict]:
    """(graphdefs, states) of the task's frozen side models.

    The reference is the policy's starting weights: under PEFT the base itself with the
    adapters zeroed (LoRA's delta and prefix tuning's tanh gate are then exactly zero), so
    it shares every base array with the policy; under full fine-tuning one copy.
    """
    graphdefs, states = {}, {}
    for name, spec in task.side_models().items():
        if not spec.init_from:
            graphdefs[name] = graphdef
            if config.peft.method == "none":
                states[name] = (jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params), frozen)
            else:
                states[name] = (jax.jit(lambda p: jax.tree.map(jnp.zeros_like, p))(params),
                                frozen)
            continue
        side_model = build_model(model_cfg, ml_collections.ConfigDict({"method": "none"}),
                                 mesh, rules, seed=config.seed, init_from=spec.init_from,
                                 build=spec.build)
        graphdefs[name], side_state = nnx.split(side_model)
        states[name] = (side_state,)
    return graphdefs, states


def _place(batch: dict, mesh) -> dict:
    """A prepared batch as global arrays: host rows placed over the batch axes, strings
    dropped, device arrays kept."""
    host = {k: v for k, v in batch.items() if not isinstance(v, jax.Array)}
    placed = {k: jax.device_put(v, sharding.rows_sharding(mesh, v.shape))
              for k, v in batch.items() if isinstance(v, jax.Array)}
    return {**sharding.place_batch(host, mesh), **placed}


def _held_out(eval_step, models: Models, eval_data, mesh, config, task: Task
              ) -> dict[str, float]:
    iterator = eval_data.make_iterator()
    sums: dict[str, float] = {}
    for _ in range(int(config.eval.steps)):
        host_batch = next(iterator, None)
        if host_batch is None:
            break
        batch = _place(task.prepare_eval(models, host_batch), mesh)
        out = jax.device_get(eval_step(models.params, models.frozen, models.side, batch))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    if not sums:
        return {}
    metrics = task.eval_metrics(sums)
    if "eval_nll" in metrics:
        metrics["eval_perplexity"] = math.exp(min(metrics["eval_nll"], 50.0))
    return metrics


def _early_stop(loop_state: dict, eval_metrics: dict, config) -> bool:
    if "eval_loss" not in eval_metrics:
        return False
    loss = eval_metrics["eval_loss"]
    best = loop_state["best_eval_loss"]
    if best is None or loss < best - config.eval.min_delta:
        loop_state["best_eval_loss"], loop_state["evals_since_best"] = loss, 0
        return False
    loop_state["evals_since_best"] += 1
    return config.eval.patience > 0 and loop_state["evals_since_best"] >= config.eval.patience
