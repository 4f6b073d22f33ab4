"""The one training loop: every task (pretrain, SFT, reward, DPO, PPO, GRPO) runs here.

Read top to bottom: workdir → mesh → task and data → model and optimiser (born sharded,
or restored) → jitted step → loop (dispatch step N+1 before reading step N's metrics;
checkpoint, evaluate, early-stop, preemption) → final save.
"""

from __future__ import annotations

import json
import math
import pathlib
import signal
import time
from typing import Any

import jax
import ml_collections
import numpy as np
import xxhash
from flax import nnx

from llm import attention as attn_lib
from llm import config as config_lib
from llm import metrics as metrics_lib
from llm import optim, sharding
from llm.checkpoint import (
    Checkpointer,
    CheckpointError,
    copy_params,
    load_model,
    resolve_step_dir,
)
from llm.model import ModelConfig
from llm.train import state as state_lib
from llm.train.task import Task


class TrainingError(RuntimeError):
    """The run cannot continue (non-finite loss, changed config on resume, ...)."""


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


WANDB_MODES = ("online", "offline", "disabled")


def _check_run_settings(config: ml_collections.ConfigDict) -> None:
    """Cheap checks of keys that would otherwise fail after data preparation, at the first
    evaluation, or silently."""
    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            value = config
            for part in key.split("."):
                value = value[part]
            raise config_lib.ConfigError(f"{key}={value!r}: expected {expected}")

    need(config.seq_len >= 1, "seq_len", ">= 1")
    need(config.num_epochs >= 0, "num_epochs", ">= 0 (0 = use total_steps)")
    need(config.num_epochs > 0 or config.total_steps >= 1, "total_steps",
         ">= 1 (or set num_epochs)")
    need(0 <= config.seed < 2**32, "seed", "an integer in [0, 2**32)")
    need(config.eval.every_steps == 0 or config.eval.steps >= 1, "eval.steps",
         ">= 1 batches per evaluation (or eval.every_steps=0)")
    need(config.eval.min_delta >= 0, "eval.min_delta", ">= 0")
    need(config.train.z_loss >= 0, "train.z_loss", ">= 0")
    need(config.train.spike_sigma >= 0, "train.spike_sigma", ">= 0")
    need(0 < config.train.spike_decay < 1, "train.spike_decay", "in (0, 1)")
    need(config.train.spike_warmup >= 0, "train.spike_warmup", ">= 0")
    need(not config.log.wandb or config.log.wandb_mode in WANDB_MODES, "log.wandb_mode",
         f"one of {', '.join(WANDB_MODES)}")
    need(config.peft.method == "none" or bool(config.init_from), "init_from",
         f"a base model for peft.method={config.peft.method!r} (its adapters train on a "
         "frozen base: a workdir, checkpoint or hf:DIR)")
    optim.check(config.optim)
    for name, axis in config.mesh.rules.items():
        need(axis in ("", None, *sharding.MESH_AXES), f"mesh.rules.{name}",
             f"a mesh axis ({', '.join(sharding.MESH_AXES)}) or '' to replicate")
    _model_config(config)  # enum and shape errors now, not after the data is prepared
    if config.init_from.startswith("hf:"):
        from llm.hf.config import load_config_json

        load_config_json(config.init_from[3:])
    elif config.init_from:
        resolve_step_dir(config.init_from)


def _check_loop_settings(config: ml_collections.ConfigDict, mesh) -> None:
    for key in ("checkpoint.every_steps", "log.every_steps", "checkpoint.keep"):
        section, name = key.split(".")
        if int(config[section][name]) < 1:
            raise config_lib.ConfigError(f"{key}={config[section][name]}: expected >= 1")
    if int(config.eval.every_steps) < 0 or int(config.eval.patience) < 0:
        raise config_lib.ConfigError("eval.every_steps and eval.patience: expected >= 0")
    accum = int(config.optim.grad_accum)
    if config.batch_size <= 0 or config.batch_size % accum:
        raise config_lib.ConfigError(
            f"batch_size={config.batch_size}: expected a positive multiple of "
            f"optim.grad_accum={accum}")
    micro = config.batch_size // accum
    divisor = sharding.batch_divisor(mesh)
    if micro % divisor:
        raise config_lib.ConfigError(
            f"batch_size={config.batch_size}: each micro-batch ({micro} rows) must divide "
            f"over the mesh's data x fsdp = {divisor} devices")


def _resolve_model_config(config: ml_collections.ConfigDict, vocab_size: int | None
                          ) -> ModelConfig:
    """The model config once the data's tokenizer fixes the vocabulary size."""
    if vocab_size and vocab_size != config.model.vocab_size:
        print(f"model.vocab_size {config.model.vocab_size} -> {vocab_size} (the tokenizer's)")
        config.model.vocab_size = vocab_size
    return _model_config(config)


def _model_config(config: ml_collections.ConfigDict) -> ModelConfig:
    """`config.model` with the `peft.*` overrides, validated."""
    from llm import peft

    if config.seq_len > config.model.max_seq_len:
        raise config_lib.ConfigError(
            f"seq_len={config.seq_len}: longer than model.max_seq_len={config.model.max_seq_len}")
    values = {k: v for k, v in config.model.items() if k != "size"}
    values.update(peft.model_config_overrides(config.peft))
    model_cfg = ModelConfig.from_dict(values)
    attn_lib.check_implementation(model_cfg.attention)
    return model_cfg


def train(config: ml_collections.ConfigDict, task: Task | None = None) -> dict[str, Any]:
    """Run (or resume) training in `config.workdir`; returns the final metrics."""
    # ---------------------------------------------------------------- workdir and config
    if not config.workdir:
        raise config_lib.ConfigError("--config.workdir: required (where checkpoints go)")
    workdir = _make_workdir(config)
    sharding.maybe_initialize_distributed()
    is_primary = jax.process_index() == 0
    if task is None:
        from llm.train import get_task

        task = get_task(config.task)(config)
    _check_run_settings(config)
    task.check()

    # ---------------------------------------------------------------- mesh
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    rules = {k: (v or None) for k, v in config.mesh.rules.items()}
    _check_loop_settings(config, mesh)

    # ---------------------------------------------------------------- data
    with config.unlocked():
        train_data, eval_data = task.datasets(config, mesh, workdir)
        model_cfg = _resolve_model_config(config, train_data.vocab_size)
        total_steps = int(config.total_steps)
        if config.num_epochs and train_data.batches_per_epoch:
            total_steps = int(config.num_epochs) * train_data.batches_per_epoch
            config.total_steps = total_steps
    if total_steps <= 0:
        raise config_lib.ConfigError(f"total_steps={total_steps}: expected > 0")
    if eval_data is None and config.eval.every_steps > 0 and config.eval.patience > 0:
        raise config_lib.ConfigError(f"eval.patience={config.eval.patience}: early stopping "
                                     "needs a validation loss, and this run has no validation "
                                     "split (see above)")
    if int(config.optim.warmup_steps) > total_steps:
        print(f"optim.warmup_steps={config.optim.warmup_steps} exceeds the run's "
              f"{total_steps} steps: the learning rate warms up over all of them", flush=True)
    resolved = json.loads(config_lib.to_json(config))
    checkpointer = Checkpointer(workdir / "checkpoints", keep=config.checkpoint.keep,
                                async_save=config.checkpoint.async_save,
                                crash_before_commit_step=config.debug.crash_before_commit_step)
    _check_same_run(workdir, resolved, checkpointer)
    _copy_tokenizer(train_data.tokenizer_dir, workdir, is_primary, bool(checkpointer.steps()))

    # ---------------------------------------------------------------- model and optimiser
    tx, schedule = optim.make_optimizer(config.optim, total_steps)
    graphdef, params, frozen = _build_params(task, model_cfg, config, mesh, rules,
                                             train_data.tokenizer_dir)
    state = jax.jit(lambda p: state_lib.new_state(p, tx, config.seed))(params)
    state_shardings = jax.tree.map(lambda x: x.sharding, state)
    frozen_shardings = jax.tree.map(lambda x: x.sharding, frozen)

    # ---------------------------------------------------------------- checkpoint / resume
    train_iter = train_data.make_iterator()
    loop_state = {"best_eval_loss": None, "evals_since_best": 0, "tokens_seen": 0}
    if config.peft.method != "none":  # adapters record the base they were trained on
        from llm.peft import lora

        loop_state["base_hash"] = lora.base_hash(frozen)
    restored = _maybe_resume(checkpointer, state, state_shardings, train_iter)
    start_step = 0
    if restored is not None:
        base_hash = loop_state.get("base_hash")
        start_step, state, loop_state = restored
        if base_hash != loop_state.get("base_hash"):
            raise TrainingError(
                f"{workdir}: the adapters were trained on a different base than "
                f"init_from={config.init_from!r} gives now; restore that base or use a new "
                "workdir")
        print(f"resumed from {workdir / 'checkpoints' / str(start_step)}", flush=True)
    if is_primary:  # atomically: a torn config.json would make the workdir look foreign
        tmp = workdir / "config.json.tmp"
        tmp.write_text(json.dumps(resolved, indent=2, sort_keys=True))
        tmp.replace(workdir / "config.json")
    writer = metrics_lib.MetricsWriter(workdir, start_step, config.log, is_primary, resolved)

    # ---------------------------------------------------------------- jitted steps
    use_dropout = any(getattr(model_cfg, k) > 0 for k in ("embed_dropout", "attn_dropout",
                                                           "resid_dropout"))
    step_fn = state_lib.make_train_step(
        task, graphdef, tx, schedule, grad_accum=int(config.optim.grad_accum),
        use_dropout=use_dropout, skip_spikes=bool(config.train.skip_spikes),
        spike_sigma=float(config.train.spike_sigma),
        spike_warmup=int(config.train.spike_warmup), spike_decay=float(config.train.spike_decay),
        inject_nan_step=int(config.debug.inject_nan_step),
        adapter_dropout=config.peft.method in ("lora", "qlora") and config.peft.dropout > 0)
    replicated = sharding.replicated(mesh)
    train_step = jax.jit(step_fn, in_shardings=(state_shardings, frozen_shardings, None),
                         out_shardings=(state_shardings, replicated), donate_argnums=0)
    eval_step = jax.jit(state_lib.make_eval_step(task, graphdef),
                        out_shardings=replicated)

    flops_per_token = metrics_lib.train_flops_per_token(model_cfg, config.seq_len)
    peak_flops, _ = metrics_lib.device_peak_flops()

    def evaluate_all(params: Any, step: int) -> dict[str, float]:
        """Validation loss and perplexity (when there is a validation split) plus the task's
        own evaluation, printed."""
        metrics = {} if eval_data is None else _evaluate(eval_step, params, frozen, eval_data,
                                                         mesh, config, task)
        metrics.update(task.evaluate(nnx.merge(graphdef, params, frozen), step))
        if metrics:
            print(" | ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
        return metrics

    # ---------------------------------------------------------------- loop
    stop = _StopFlag()
    stop.install()
    pending = None  # (step, device metrics, batch hash, tokens) of the step in flight
    last_read = time.perf_counter()
    first_step = start_step
    final_metrics: dict[str, Any] = {}
    stopped_early = False
    step = last_saved = start_step
    has_prepare = type(task).prepare is not Task.prepare
    try:
        while step < total_steps:
            host_batch = next(train_iter, None)
            if host_batch is None:
                print("training data exhausted", flush=True)
                break
            digest = batch_hash(host_batch)
            batch = sharding.place_batch(host_batch, mesh)
            if has_prepare:
                batch = task.prepare(nnx.merge(graphdef, state["params"], frozen), batch,
                                     jax.random.fold_in(state["rng"], step + 1_000_003))
            tokens = int(np.prod(np.shape(host_batch[task.tokens_key]))) * jax.process_count()
            state, device_metrics = train_step(state, frozen, batch)
            step += 1
            if pending is not None:  # read step N-1 while step N runs
                last_read = _report(pending, writer, config, total_steps, first_step,
                                    last_read, flops_per_token, peak_flops, final_metrics)
            pending = (step, device_metrics, digest, tokens)
            at_checkpoint = step % config.checkpoint.every_steps == 0 or step == total_steps
            at_eval = config.eval.every_steps > 0 and (
                step % config.eval.every_steps == 0 or step == total_steps)
            preempted = stop.agreed()
            if at_checkpoint or at_eval or preempted:
                last_read = _report(pending, writer, config, total_steps, first_step,
                                    last_read, flops_per_token, peak_flops, final_metrics)
                pending = None
            if at_eval:
                eval_metrics = evaluate_all(state["params"], step)
                writer.write(step, eval_metrics)
                final_metrics.update(eval_metrics)
                stopped_early = _early_stop(loop_state, eval_metrics, config)
            loop_state["tokens_seen"] += tokens
            if at_checkpoint or preempted or stopped_early:
                checkpointer.save(step, state, train_iter, dict(loop_state), resolved)
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
                final_metrics.update(evaluate_all(state["params"], step))
        if pending is not None:
            _report(pending, writer, config, total_steps, first_step, last_read,
                    flops_per_token, peak_flops, final_metrics)
        if step > last_saved:
            checkpointer.save(step, state, train_iter, dict(loop_state), resolved)
    finally:
        stop.restore()
        checkpointer.close()
        writer.close()
    final_metrics["step"] = step
    return final_metrics


def _build_params(task: Task, model_cfg: ModelConfig, config, mesh, rules,
                  tokenizer_dir: pathlib.Path | None = None):
    """(graphdef, trainable params, frozen rest): born sharded, base from init_from, then
    `peft.*` adapters or quantisation applied on top (the base must be loaded first)."""
    from llm import peft

    def create():
        return task.build_model(model_cfg, nnx.Rngs(params=config.seed))

    graphdef, full = sharding.init_sharded(create, mesh, rules)
    if config.init_from:
        loaded = load_model(config.init_from, mesh, rules)
        if loaded.model_cfg.vocab_size != model_cfg.vocab_size:
            raise CheckpointError(
                f"init_from={config.init_from}: its vocabulary ({loaded.model_cfg.vocab_size})"
                f" differs from this run's ({model_cfg.vocab_size})")
        _check_same_architecture(loaded.model_cfg, model_cfg, config.init_from)
        _check_same_tokenizer(loaded.tokenizer_dir, tokenizer_dir, config.init_from)
        copy_params(full, loaded.params, f"init_from={config.init_from}")
    model = nnx.merge(graphdef, full)
    if config.peft.method != "none":
        model = peft.apply_peft(model, config.peft, nnx.Rngs(params=config.seed + 1))
        graphdef, full = nnx.split(model)
        model = nnx.merge(graphdef, sharding.shard_state(full, mesh, rules))
    graphdef, params, frozen = nnx.split(model, task.trainable(), ...)
    return graphdef, params, frozen


# Settings that change what the loaded weights compute; shapes alone would not catch them.
_ARCHITECTURE_KEYS = ("family", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                      "d_ff", "norm_eps", "rope_theta", "tie_embeddings", "qk_norm",
                      "qkv_bias", "sliding_window")
# May differ on purpose (context extension); reported, not refused.
_ROPE_SCALING_KEYS = ("rope_scaling", "rope_factor", "rope_low_freq_factor",
                      "rope_high_freq_factor", "rope_original_max_len", "max_seq_len")


def _check_same_architecture(loaded: ModelConfig, run: ModelConfig, init_from: str) -> None:
    """Refuse a base whose architecture differs from the run's model config (one error
    listing every difference); print rope-scaling / context differences."""
    def differences(keys):
        return [f"model.{k}={getattr(run, k)!r} (init_from has {getattr(loaded, k)!r})"
                for k in keys if getattr(run, k) != getattr(loaded, k)]

    wrong = differences(_ARCHITECTURE_KEYS)
    if wrong:
        raise CheckpointError(f"init_from={init_from}: the run's model differs from the "
                              f"loaded one: {'; '.join(wrong)}; set these keys to match")
    for line in differences(_ROPE_SCALING_KEYS):
        print(f"init_from={init_from}: this run uses {line}")


def _make_workdir(config: ml_collections.ConfigDict) -> pathlib.Path:
    """The absolute workdir, created; refused when it is a file or another tool's folder
    (e.g. a Hugging Face model whose config.json a run would overwrite)."""
    workdir = pathlib.Path(config.workdir).absolute()
    try:
        workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise config_lib.ConfigError(f"--config.workdir={config.workdir}: cannot create it "
                                     f"({error.strerror})") from None
    saved = workdir / "config.json"
    if saved.exists() and not isinstance(_read_run_config(saved), dict):
        raise config_lib.ConfigError(
            f"--config.workdir={config.workdir}: holds a config.json that is not a training "
            "run's (a model folder?); a run would overwrite it. Use a new workdir.")
    return workdir


def _read_run_config(path: pathlib.Path) -> dict | None:
    """A saved run config (it has a 'task'), or None for any other JSON or text."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) and "task" in saved else None


def _check_same_run(workdir: pathlib.Path, resolved: dict, checkpointer) -> None:
    """Refuse a workdir that holds a run with a different config (checkpoints or not).

    The workdir's config.json is the record; when it is gone, the newest checkpoint's own
    copy is (a different model would otherwise fail to restore and be set aside as corrupt).
    """
    steps = checkpointer.steps()
    saved_file = workdir / "config.json"
    if not saved_file.exists() and steps:
        saved_file = checkpointer.directory / str(steps[-1]) / "config" / "metadata"
    saved = _read_run_config(saved_file) if saved_file.exists() else None
    if saved is None:
        return
    changed = config_lib.changed_keys(saved, resolved)
    if changed:
        raise TrainingError(
            f"{workdir} holds a run with a different config; changed keys: "
            f"{', '.join(changed)}. Use a new workdir, or revert these keys.")


def _check_same_tokenizer(base_dir, data_dir, init_from: str) -> None:
    """Refuse data tokenised with another vocabulary than the base's (equal sizes alone would
    let token ids silently mean different pieces)."""
    from llm.data.tokenizer import HF_FILE, SPM_FILE

    if base_dir is None or data_dir is None:
        return
    for name in (SPM_FILE, HF_FILE):
        base, data = pathlib.Path(base_dir) / name, pathlib.Path(data_dir) / name
        if base.is_file() and data.is_file():
            if base.read_bytes() != data.read_bytes():
                raise CheckpointError(
                    f"init_from={init_from}: its tokenizer ({base}) differs from the one the "
                    f"data was prepared with ({data}); prepare the data with "
                    "data.tokenizer.path set to the base's tokenizer")
            return


def _maybe_resume(checkpointer, state, state_shardings, train_iter):
    if not checkpointer.steps():
        return None
    restored = checkpointer.restore_latest(state, state_shardings, train_iter)
    if restored is None:
        print("no readable checkpoint; starting from scratch", flush=True)
    return restored


def _report(pending, writer, config, total_steps, first_step, last_read, flops_per_token,
            peak_flops, final_metrics) -> float:
    """Read one step's metrics (blocking), stop on non-finite, log every N steps."""
    step, device_metrics, digest, tokens = pending
    values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
    now = time.perf_counter()
    if not values.pop("finite"):
        raise TrainingError(
            f"step {step}: non-finite loss ({values['loss']}) or gradient norm "
            f"({values['grad_norm']}); the update was not applied and no checkpoint was "
            "written after the last good one. Lower optim.lr or check the data.")
    values.pop("weight", None)
    elapsed = max(now - last_read, 1e-9)
    values["tokens_per_s"] = tokens / elapsed
    values["mfu"] = values["tokens_per_s"] * flops_per_token / peak_flops
    values["step_time_s"] = elapsed
    if "nll" in values:
        values["perplexity"] = math.exp(min(values["nll"], 50.0))
    final_metrics.update(values)
    if step % config.log.every_steps == 0 or step == total_steps or step == first_step + 1:
        writer.write(step, {**values, "batch_hash": digest})
        eta = (total_steps - step) * elapsed
        metrics_lib.print_progress(step, total_steps, values, eta)
    return now


def _evaluate(eval_step, params, frozen, eval_data, mesh, config, task) -> dict[str, float]:
    iterator = eval_data.make_iterator()
    sums: dict[str, float] = {}
    for _ in range(int(config.eval.steps)):
        host_batch = next(iterator, None)
        if host_batch is None:
            break
        out = jax.device_get(eval_step(params, frozen, sharding.place_batch(host_batch, mesh)))
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


def _copy_tokenizer(tokenizer_dir, workdir: pathlib.Path, is_primary: bool,
                    has_checkpoints: bool) -> None:
    """Keep `workdir/tokenizer` equal to the data's tokenizer: copy it, replace a stale one
    (e.g. left by a failed earlier attempt), or refuse when checkpoints were trained on a
    different one."""
    import shutil

    if tokenizer_dir is None or not is_primary:
        return
    target = workdir / "tokenizer"
    if pathlib.Path(tokenizer_dir).resolve() == target.resolve():
        return
    if target.exists() and not _same_files(pathlib.Path(tokenizer_dir), target):
        if has_checkpoints:
            raise TrainingError(f"{target}: differs from the data's tokenizer {tokenizer_dir}, "
                                "and this workdir's checkpoints were trained with it. Use a "
                                "new workdir, or the data prepared with that tokenizer.")
        shutil.rmtree(target)
    if not target.exists():
        shutil.copytree(tokenizer_dir, target)


def _same_files(a: pathlib.Path, b: pathlib.Path) -> bool:
    """True when two folders hold the same file names with the same bytes."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    if names != sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file()):
        return False
    return all((a / n).read_bytes() == (b / n).read_bytes() for n in names)

