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
from llm.loading import build_model, load_model
from llm.model import ModelConfig
from llm.train import checks
from llm.train import state as state_lib
from llm.train import workdir as workdir_lib
from llm.train.guard import UpdateGuard
from llm.train.report import StepReporter, due
from llm.train.task import DataSource, Models, Task
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
        self.stopped = False  # the loop stopped for a signal (on every process alike)
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
            self.stopped = self.raised
        else:
            from jax.experimental import multihost_utils

            flags = multihost_utils.process_allgather(np.array([self.raised]))
            self.stopped = bool(np.any(flags))
        return self.stopped

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclasses.dataclass
class Plan:
    """What the loop resolves before building anything: data, model config, step count."""

    train_data: DataSource
    eval_data: DataSource | None
    model_cfg: ModelConfig
    total_steps: int
    run_config: dict  # the config as given plus its `resolved` section


@dataclasses.dataclass
class Run:
    """The built run: model arrays, side models, jitted steps, and the state that moves."""

    config: ml_collections.ConfigDict
    task: Task
    plan: Plan
    mesh: jax.sharding.Mesh
    graphdef: nnx.GraphDef
    frozen: Any
    side_graphdefs: dict
    side: dict
    state: dict
    train_step: Any
    eval_step: Any
    train_iter: Any
    checkpointer: Checkpointer
    loop_state: dict
    prepared: tuple | None = None  # (batch, index of its next update, digest, tokens, flops)
    eval_tasks: Any = None  # llm.eval.during_training.TrainingEval, from eval.tasks

    def models(self) -> Models:
        """The policy and side models as they are now, for the task's host code."""
        return Models(self.graphdef, self.state["params"], self.frozen, self.side_graphdefs,
                      self.side, self.mesh, self.plan.model_cfg)

    def prepare_next(self, step: int) -> bool:
        """Read and prepare the next host batch; False when the data is exhausted."""
        host_batch = next(self.train_iter, None)
        if host_batch is None:
            return False
        digest = batch_hash(host_batch)
        batch = _place(self.task.prepare(self.models(), host_batch,
                                         state_lib.prepare_rng(self.state["rng"], step)),
                       self.mesh)
        self.prepared = (batch, 0, digest, *self.task.count(batch))
        return True

    def update(self) -> tuple[dict, str, float, float]:
        """One optimiser update on the prepared batch's next minibatch: (device metrics,
        batch digest, tokens, FLOPs) of this update."""
        batch, index, digest, tokens, flops = self.prepared
        self.state, device_metrics = self.train_step(self.state, self.frozen, self.side, batch,
                                                     np.int32(index))
        updates = self.task.num_updates()
        self.prepared = None if index + 1 == updates else (batch, index + 1, digest, tokens,
                                                           flops)
        return device_metrics, digest, tokens / updates, flops / updates

    def save(self, step: int) -> None:
        """Checkpoint everything a rerun needs, a batch between two of its updates included."""
        extra: dict[str, Any] = {"task": self.task.state_dict()}
        batch = None
        if self.prepared is not None:
            batch, index, digest, tokens, flops = self.prepared
            extra["prepared"] = {"index": index, "digest": digest, "tokens": tokens,
                                 "flops": flops}
        self.checkpointer.save(step, self.state, self.train_iter, {**self.loop_state, **extra},
                               self.plan.run_config, prepared=batch)

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out loss through the task (when there is a validation split) plus the task's
        own evaluation, printed."""
        eval_data = self.plan.eval_data
        metrics = {} if eval_data is None else _held_out(self, eval_data)
        metrics.update(self.task.evaluate(self.models(), step))
        if self.eval_tasks is not None:
            metrics.update(self.eval_tasks(self.models().policy(), self.mesh))
        if metrics:
            print(" | ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        return metrics


def train(config: ml_collections.ConfigDict, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) training in `config.workdir`, holding its lock; returns the final
    metrics, with `unfinished` True when a signal stopped it before total_steps."""
    workdir = workdir_lib.check_workdir(config)
    sharding.maybe_initialize_distributed()
    if task is None:
        from llm.train import get_task

        task = get_task(config.task)(config)
    created = not workdir.exists()
    lock = workdir_lib.WorkdirLock(workdir, jax.process_index(), config.take_over_lock)
    try:
        checks.check_run_settings(config)
        task.check()
        workdir_lib.make_workdir(config)  # only once the settings are known to be good
        lock.acquire()
        return _train(config, task, workdir)
    finally:
        lock.release()
        if created and workdir.is_dir() and not any(workdir.iterdir()):
            workdir.rmdir()  # a refused run leaves nothing behind


def _train(config: ml_collections.ConfigDict, task: Task, workdir) -> dict[str, Any]:
    """The run itself, in a workdir this process holds."""
    # ---------------------------------------------------------------- task and mesh
    is_primary = jax.process_index() == 0
    if task.num_updates() < 1:
        raise config_lib.ConfigError(f"task {task.name!r}: num_updates() is "
                                     f"{task.num_updates()}; expected >= 1 per batch")
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    rules = {k: (v or None) for k, v in config.mesh.rules.items()}
    checks.check_loop_settings(config, mesh)

    # ---------------------------------------------------------------- data and run config
    plan = _plan(config, task, mesh, workdir)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save)
    workdir_lib.check_same_run(workdir, plan.run_config, checkpointer)
    if is_primary:
        workdir_lib.copy_tokenizer(plan.train_data.tokenizer_dir, workdir,
                                   bool(checkpointer.steps()))

    # ---------------------------------------------------------------- model, steps, resume
    run = _build(config, task, plan, mesh, rules, checkpointer)
    start_step = _resume(run, workdir)
    if is_primary:
        if start_step == 0:
            workdir_lib.set_aside_logs(workdir)
        workdir_lib.write_run_config(workdir, plan.run_config)
    writer = metrics_lib.MetricsWriter(workdir, start_step, config.log, is_primary,
                                       plan.run_config)
    reporter = StepReporter(writer, config.log.every_steps, plan.total_steps, start_step,
                            task.observe if task.has_state else None)

    # ---------------------------------------------------------------- loop
    stop = _StopFlag()
    stop.install()
    try:
        step = _loop(run, start_step, reporter, writer, stop)
    finally:
        stop.restore()
        checkpointer.close()
        writer.close()
    reporter.final["step"] = step
    reporter.final["unfinished"] = stop.stopped and step < plan.total_steps
    return reporter.final


def _plan(config, task: Task, mesh, workdir) -> Plan:
    """The task's data, the model config its tokenizer fixes, the step count, the run config
    with its `resolved` section (the user's keys stay as given)."""
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
    run_config["resolved"] = {
        "model": dataclasses.asdict(model_cfg), "total_steps": total_steps,
        "tokenizer": str(train_data.tokenizer_dir) if train_data.tokenizer_dir else ""}
    return Plan(train_data, eval_data, model_cfg, total_steps, run_config)


def _build(config, task: Task, plan: Plan, mesh, rules, checkpointer: Checkpointer) -> Run:
    """Model (born sharded, base loaded, adapters on), side models, optimiser, train state
    and the jitted steps."""
    model = build_model(plan.model_cfg, config.peft, mesh, rules, seed=config.seed,
                        init_from=config.init_from, build=task.build, fresh=task.fresh,
                        data_tokenizer_dir=plan.train_data.tokenizer_dir)
    task.initialise(model, mesh, rules)
    graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
    del model
    side_graphdefs, side = _side_models(task, graphdef, params, frozen, config, mesh, rules)
    tx, schedule = optim.make_optimizer(config.optim, plan.total_steps, task.param_groups())
    guard = UpdateGuard.from_config(tx, config.train)
    state = jax.jit(lambda p: state_lib.new_state(p, guard, config.seed))(params)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    use_dropout = any(getattr(plan.model_cfg, k) > 0
                      for k in ("embed_dropout", "attn_dropout", "resid_dropout"))
    step_fn = state_lib.make_train_step(
        task, graphdef, side_graphdefs, guard, schedule,
        grad_accum=int(config.optim.grad_accum), use_dropout=use_dropout,
        adapter_dropout=config.peft.method in ("lora", "qlora") and config.peft.dropout > 0)
    replicated = sharding.replicated(mesh)
    train_step = jax.jit(step_fn, out_shardings=(state_shardings, replicated),
                         donate_argnums=0)
    eval_step = jax.jit(state_lib.make_eval_step(task, graphdef, side_graphdefs),
                        out_shardings=replicated)
    loop_state: dict[str, Any] = {"best_eval_loss": None, "evals_since_best": 0,
                                  "tokens_seen": 0}
    if config.peft.method != "none":  # adapters record the base they were trained on
        from llm.peft import lora

        loop_state["base_hash"] = lora.base_hash(frozen)
    run = Run(config, task, plan, mesh, graphdef, frozen, side_graphdefs, side, state,
              train_step, eval_step, plan.train_data.make_iterator(), checkpointer, loop_state)
    if config.eval.tasks:  # loaded (and checked) now, not at the first evaluation
        from llm.eval.during_training import TrainingEval

        if config.eval.every_steps <= 0:
            raise config_lib.ConfigError(f"eval.tasks={config.eval.tasks!r} run every "
                                         "eval.every_steps, which is 0; set it > 0")

        run.eval_tasks = TrainingEval(config.eval.tasks, plan.train_data.tokenizer_dir)
    return run


def _resume(run: Run, workdir) -> int:
    """Restore the newest readable checkpoint into `run` (state, data position, loop and
    task state, a batch mid-use); returns the step to continue from (0 when none)."""
    checkpointer = run.checkpointer
    if not checkpointer.steps():
        return 0
    shardings = jax.tree.map(lambda x: x.sharding, run.state)
    restored = checkpointer.restore_latest(run.state, shardings, run.train_iter, run.mesh,
                                           run.plan.train_data.reshardable)
    if restored is None:
        # A failed restore may have moved the iterator in place: a fresh start reads the
        # data from its beginning, as a first run would.
        run.train_iter = run.plan.train_data.make_iterator()
        print(f"no readable checkpoint in {checkpointer.directory}; starting from step 0",
              flush=True)
        return 0
    start_step, run.state, loop_state, prepared_batch = restored
    if run.loop_state.get("base_hash") != loop_state.get("base_hash"):
        raise TrainingError(
            f"{workdir}: the adapters were trained on a different base than "
            f"init_from={run.config.init_from!r} gives now; restore that base or use a new "
            "workdir")
    run.task.load_state_dict(loop_state.pop("task", {}))
    saved = loop_state.pop("prepared", None)
    if prepared_batch is not None:
        run.prepared = (prepared_batch, saved["index"], saved["digest"], saved["tokens"],
                        saved["flops"])
    run.loop_state = loop_state
    print(f"resumed from {workdir / 'checkpoints' / str(start_step)}", flush=True)
    return start_step


def _loop(run: Run, start_step: int, reporter: StepReporter, writer, stop: _StopFlag) -> int:
    """Updates until total_steps, the data's end, a signal or early stopping; returns the
    last step. Each update is dispatched before the previous one's metrics are read."""
    config, task, total_steps = run.config, run.task, run.plan.total_steps
    stopped_early = False
    step = last_saved = start_step
    while step < total_steps:
        if run.prepared is None:
            if task.has_state:
                reporter.flush()  # the task state has seen every step before `prepare`
            if not run.prepare_next(step):
                print("training data exhausted", flush=True)
                break
        device_metrics, digest, tokens, flops = run.update()
        step += 1
        reporter.submit(step, device_metrics, digest, tokens, flops)
        at_checkpoint = due(step, config.checkpoint.every_steps, total_steps)
        at_eval = due(step, config.eval.every_steps, total_steps)
        preempted = stop.agreed()
        if at_checkpoint or at_eval or preempted:
            reporter.flush()
        if at_eval:
            eval_metrics = run.evaluate(step)
            writer.write(step, eval_metrics)
            reporter.final.update(eval_metrics)
            stopped_early = _early_stop(run.loop_state, eval_metrics, config)
        run.loop_state["tokens_seen"] += tokens
        if at_checkpoint or preempted or stopped_early:
            run.save(step)
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
            reporter.final.update(run.evaluate(step))
    reporter.flush()
    if step > last_saved:
        run.save(step)
    return step


def _side_models(task: Task, graphdef, params, frozen, config, mesh, rules
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
            else:  # only the adapters are zeroed; a task's fresh heads stay as they start
                from llm.peft import lora

                adapters, heads = nnx.split_state(params, lora.ADAPTERS, ...)
                zeroed = jax.jit(lambda a: jax.tree.map(jnp.zeros_like, a))(adapters)
                states[name] = (zeroed, jax.jit(lambda h: jax.tree.map(jnp.copy, h))(heads),
                                frozen)
            continue
        # Loaded whole, heads included (a reward model's score head is in its checkpoint).
        loaded = load_model(spec.init_from, mesh, rules, build=spec.build)
        graphdefs[name], states[name] = loaded.graphdef, (loaded.params,)
    return graphdefs, states


def _place(batch: dict, mesh) -> dict:
    """A prepared batch as global arrays: host rows placed over the batch axes, strings
    dropped, device arrays kept."""
    host = {k: v for k, v in batch.items() if not isinstance(v, jax.Array)}
    placed = {k: jax.device_put(v, sharding.rows_sharding(mesh, v.shape))
              for k, v in batch.items() if isinstance(v, jax.Array)}
    return {**sharding.place_batch(host, mesh), **placed}


def _held_out(run: Run, eval_data: DataSource) -> dict[str, float]:
    """Summed held-out metrics over `eval.steps` batches, each prepared by the task."""
    iterator = eval_data.make_iterator()
    models = run.models()
    sums: dict[str, float] = {}
    for _ in range(int(run.config.eval.steps)):
        host_batch = next(iterator, None)
        if host_batch is None:
            break
        batch = _place(run.task.prepare_eval(models, host_batch), run.mesh)
        out = jax.device_get(run.eval_step(models.params, models.frozen, models.side, batch))
        for key, value in out.items():
            sums[key] = sums.get(key, 0.0) + float(value)
    if not sums:
        return {}
    metrics = run.task.eval_metrics(sums)
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
