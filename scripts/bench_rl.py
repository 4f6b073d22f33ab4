"""A GRPO step: ours against TRL's GRPOTrainer on the same model, prompts, reward, settings.

    python scripts/bench_rl.py [--size=small] [--prompts=8] [--generations=8]
        [--new_tokens=64] [--prompt_len=16] [--steps=3] [--peer=trl|none]

Ours runs the grpo task's own pieces as the loop does: `GrpoTask.prepare` (rollout on the
policy's arrays, rewards, advantages) then the loop's jitted train step. Reported: samples/s
(completions per second of whole GRPO steps), the time split (rollout / reward / update), and
the overhead check: our step against our sampler alone on the same prompts plus our train
step alone on the same batch. The peer gets the same weights (exported to Hugging Face,
float32), prompts (as words `t<id>` of a word-level tokenizer), reward function, G,
completion length, temperature 1, beta 0, loss_type dapo. Prints a table, then one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

_SIZE = flags.DEFINE_string("size", "small", "configs/models.py size.")
_PROMPTS = flags.DEFINE_integer("prompts", 8, "Prompts per step.", lower_bound=1)
_G = flags.DEFINE_integer("generations", 8, "Completions per prompt (G).", lower_bound=2)
_NEW = flags.DEFINE_integer("new_tokens", 64, "Tokens per completion.", lower_bound=1)
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 16, "Tokens per prompt.", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed GRPO steps (after one untimed).",
                              lower_bound=1)
_PEER = flags.DEFINE_enum("peer", "trl", ["trl", "none"], "Peer to measure in the same run.")
_DTYPE = flags.DEFINE_string("dtype", "float32", "Compute dtype of ours (float32, bfloat16).")
_ALGO = flags.DEFINE_enum("algo", "grpo", ["grpo", "ppo"],
                          "grpo: against TRL's GRPOTrainer; ppo: our PPO step's time split "
                          "(prompts x generations completions, one per prompt).")
_EPOCHS = flags.DEFINE_integer("ppo_epochs", 1, "PPO: num_ppo_epochs per rollout batch.",
                               lower_bound=1)


class WordTokenizer:
    """Token i is the word 't<i>' (what the peer's word-level tokenizer reads)."""

    role_ids: dict[str, int] = {}

    def __init__(self, vocab_size: int):
        self.vocab_size, self.eos_id, self.pad_id, self.bos_id = vocab_size, 1, 0, 0
        self.eos_ids = self.stop_ids = (self.eos_id,)

    def decode(self, ids) -> str:
        return " ".join(f"t{int(i)}" for i in ids)


def even_tokens(prompts, completions, **row_fields) -> list[float]:
    """The benchmark's reward: how many completion tokens have an even id."""
    return [float(sum(int(w[1:]) % 2 == 0 for w in c.split() if w[1:].isdigit()))
            for c in completions]


def grpo_config(size: str, dtype: str):
    """configs/grpo.py with the benchmark's shapes."""
    from llm.config import load_config

    return load_config(f"configs/grpo.py:model={size}", [
        f"batch_size={_PROMPTS.value * _G.value}", f"grpo.num_generations={_G.value}",
        f"rl.max_prompt_length={_PROMPT_LEN.value}",
        f"rl.max_completion_length={_NEW.value}", f"model.dtype={dtype}",
        "grpo.loss_type=dapo", "grpo.beta=0.0", "workdir=/tmp/bench_rl_unused",
        "rl.log_samples_every=0", "optim.lr=1e-5"])


def build_ours(config, prompt_BP: np.ndarray):
    """(step(i) -> split, sampler-alone(), update-alone(batch), graphdef, params, model_cfg)."""
    from llm import optim, sharding
    from llm.model import ModelConfig, Transformer
    from llm.rl import rewards as rewards_lib
    from llm.rl import rollout as rollout_lib
    from llm.train import state as state_lib
    from llm.train.grpo import GrpoTask
    from llm.train.guard import UpdateGuard
    from llm.train.task import Models

    model_cfg = ModelConfig.from_dict({k: v for k, v in config.model.items() if k != "size"})
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    graphdef, params, frozen = nnx.split(Transformer(model_cfg, nnx.Rngs(0)), nnx.Param, ...)
    task = GrpoTask(config)
    task.check()
    task.model_cfg, task.tokenizer = model_cfg, WordTokenizer(model_cfg.vocab_size)
    task.reward_funcs = rewards_lib.RewardFunctions(["even_tokens"], [even_tokens],
                                                    np.ones(1, np.float32))
    tx, schedule = optim.make_optimizer(config.optim, 1000, {})
    guard = UpdateGuard.from_config(tx, config.train)
    state = state_lib.new_state(params, guard, 0)
    train_step = jax.jit(state_lib.make_train_step(task, graphdef, {}, guard, schedule,
                                                   grad_accum=1, use_dropout=False),
                         donate_argnums=0)
    host_batch = {"prompt_tokens": prompt_BP,
                  "prompt_lengths": np.full(len(prompt_BP), prompt_BP.shape[1], np.int32),
                  "answer": np.array([""] * len(prompt_BP), dtype=object)}
    holder = {"state": state}

    def step(i: int) -> dict[str, float]:
        start = time.perf_counter()
        models = Models(graphdef, holder["state"]["params"], frozen, {}, {}, mesh, model_cfg)
        batch = task.prepare(models, host_batch, state_lib.prepare_rng(jax.random.key(0), i))
        prepared = time.perf_counter()
        holder["batch"] = {k: jnp.asarray(v) for k, v in batch.items()}
        holder["state"], metrics = train_step(holder["state"], frozen, {}, holder["batch"],
                                              np.int32(0))
        jax.block_until_ready(metrics)
        end = time.perf_counter()
        return {"step": end - start, "rollout": float(batch["stat_time_rollout_s"][0]),
                "reward": float(batch["stat_time_reward_s"][0]), "update": end - prepared,
                "tokens": float(batch["completion_tokens"].sum())}

    def sampler_alone() -> float:
        p = nnx.merge_state(holder["state"]["params"], frozen)
        return rollout_lib.rollout(graphdef, p, prompt_BP, host_batch["prompt_lengths"],
                                   num_generations=_G.value, max_new_tokens=_NEW.value,
                                   rng=jax.random.key(1), eos_ids=task.eos_ids(), mesh=mesh,
                                   **task.sampling_controls()).seconds

    def update_alone() -> float:
        start = time.perf_counter()
        batch = jax.tree.map(jnp.copy, holder["batch"])
        holder["state"], metrics = train_step(holder["state"], frozen, {}, batch, np.int32(0))
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    return step, sampler_alone, update_alone, graphdef, params, model_cfg


def build_trl(model_cfg, params, prompt_BP: np.ndarray, steps: int):
    """A callable running the peer for `steps` timed steps (+1 untimed); returns step times."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llm.hf import peer

    out = tempfile.mkdtemp(prefix="bench_rl_")
    peer.export_for_peer(model_cfg, params, f"{out}/hf", pad=0, eos=1, bos=None, unk=0)
    tokenizer = AutoTokenizer.from_pretrained(f"{out}/hf")
    prompts = [peer.words(row) for row in prompt_BP]
    timer = peer.step_timer()

    args = trl.GRPOConfig(
        output_dir=f"{out}/trl", per_device_train_batch_size=len(prompts) * _G.value,
        num_generations=_G.value, max_completion_length=_NEW.value, temperature=1.0,
        beta=0.0, loss_type="dapo", use_cpu=True, bf16=False, report_to=[],
        max_steps=steps + 1, save_strategy="no", logging_steps=1, learning_rate=1e-5,
        dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(f"{out}/hf", dtype=torch.float32)
    trainer = trl.GRPOTrainer(model=model, reward_funcs=even_tokens, args=args,
                              train_dataset=Dataset.from_dict(
                                  {"prompt": prompts * _G.value * (steps + 2)}),
                              processing_class=tokenizer, callbacks=[timer])

    def run() -> list[float]:
        trainer.train()
        return timer.seconds[1:]

    return run


def main(argv: list[str]) -> None:
    """Time our GRPO step and its parts (and the peer's), print a table and a JSON line."""
    del argv
    from llm import metrics

    if _ALGO.value == "ppo":
        ppo_main()
        return
    try:
        config = grpo_config(_SIZE.value, _DTYPE.value)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    rng = np.random.default_rng(0)
    vocab = int(config.model.vocab_size)
    prompt_BP = rng.integers(2, vocab, (_PROMPTS.value, _PROMPT_LEN.value)).astype(np.int32)
    step, sampler_alone, update_alone, graphdef, params0, model_cfg = build_ours(config,
                                                                                 prompt_BP)
    peer = (build_trl(model_cfg, jax.tree.map(np.asarray, params0), prompt_BP, _STEPS.value)
            if _PEER.value == "trl" else None)
    peak, peak_source = metrics.device_peak_flops()
    step(0)  # compiles
    splits = [step(i + 1) for i in range(_STEPS.value)]
    sampler_s = statistics.median(sampler_alone() for _ in range(_STEPS.value))
    update_s = statistics.median(update_alone() for _ in range(_STEPS.value))
    med = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    samples = _PROMPTS.value * _G.value
    result = {"size": _SIZE.value, "prompts": _PROMPTS.value, "generations": _G.value,
              "new_tokens": _NEW.value, "dtype": _DTYPE.value, "peak_flops": peak,
              "peak_source": peak_source, "ours_samples_per_s": round(samples / med["step"], 2),
              "ours_step_s": round(med["step"], 6), "ours_rollout_s": round(med["rollout"], 6),
              "ours_reward_s": round(med["reward"], 4), "ours_update_s": round(med["update"], 6),
              "sampler_alone_s": round(sampler_s, 6), "train_step_alone_s": round(update_s, 6),
              "overhead_ratio": round(med["step"] / (sampler_s + update_s), 3),
              "ours_tokens_per_step": med["tokens"]}
    print(f"GRPO step: {_PROMPTS.value} prompts x G={_G.value}, {_NEW.value} new tokens, "
          f"{_SIZE.value} {_DTYPE.value}; fp32 matmul peak {peak / 1e9:.0f} GFLOP/s "
          f"({peak_source})")
    print(f"{'':10s} {'step s':>8s} {'samples/s':>10s} {'rollout':>8s} {'reward':>8s} "
          f"{'update':>8s}")
    print(f"{'ours':10s} {med['step']:8.3f} {samples / med['step']:10.2f} "
          f"{med['rollout']:8.3f} {med['reward']:8.4f} {med['update']:8.3f}")
    print(f"our step / (sampler alone {sampler_s:.3f} s + train step alone {update_s:.3f} s)"
          f" = {result['overhead_ratio']:.3f}")
    if peer is not None:
        peer_s = statistics.median(peer())
        result.update(trl_step_s=round(peer_s, 3),
                      trl_samples_per_s=round(samples / peer_s, 2),
                      ratio_vs_trl=round(peer_s / med["step"], 2))
        print(f"{'trl':10s} {peer_s:8.3f} {samples / peer_s:10.2f}")
        print(f"ours / trl samples/s: {result['ratio_vs_trl']:.2f}")
    print(json.dumps(result))


def build_ppo(config, prompt_BP: np.ndarray):
    """step(i) -> time split of one PPO step (a rollout batch and its updates), on random
    policy and reward weights; the value is a head on the policy's trunk."""
    from llm import optim, scoring, sharding
    from llm.model import ModelConfig, Transformer
    from llm.train import state as state_lib
    from llm.train.guard import UpdateGuard
    from llm.train.ppo import PpoTask
    from llm.train.ppo_checks import check_config
    from llm.train.task import Models

    task = PpoTask(config)
    check_config(config, task.sampling_controls())
    model_cfg = ModelConfig.from_dict({k: v for k, v in config.model.items() if k != "size"})
    mesh = sharding.make_mesh(dict(config.mesh.shape))
    graphdef, params, frozen = nnx.split(task.build(Transformer(model_cfg, nnx.Rngs(0))),
                                         nnx.Param, ...)
    reward_graphdef, reward = nnx.split(scoring.add_score_head(
        Transformer(model_cfg, nnx.Rngs(1))))
    side_graphdefs = {"reward": reward_graphdef, "reference": graphdef}
    side = {"reward": (reward,), "reference": (jax.tree.map(jnp.copy, params), frozen)}
    task.model_cfg, task.tokenizer = model_cfg, WordTokenizer(model_cfg.vocab_size)
    tx, schedule = optim.make_optimizer(config.optim, 1000, task.param_groups())
    guard = UpdateGuard.from_config(tx, config.train)
    holder = {"state": state_lib.new_state(params, guard, 0)}
    train_step = jax.jit(state_lib.make_train_step(task, graphdef, side_graphdefs, guard,
                                                   schedule, grad_accum=1, use_dropout=False),
                         donate_argnums=0)
    host_batch = {"prompt_tokens": prompt_BP,
                  "prompt_lengths": np.full(len(prompt_BP), prompt_BP.shape[1], np.int32),
                  "answer": np.array([""] * len(prompt_BP), dtype=object)}

    def step(i: int) -> dict[str, float]:
        start = time.perf_counter()
        models = Models(graphdef, holder["state"]["params"], frozen, side_graphdefs, side,
                        mesh, model_cfg)
        batch = task.prepare(models, host_batch, state_lib.prepare_rng(jax.random.key(0), i))
        prepared = time.perf_counter()
        batch = {k: jnp.asarray(v) for k, v in batch.items()}
        for index in range(task.num_updates()):
            holder["state"], metrics = train_step(holder["state"], frozen, side, batch,
                                                  np.int32(index))
        jax.block_until_ready(metrics)
        end = time.perf_counter()
        split = {k: float(batch[f"stat_time_{k}_s"][0])
                 for k in ("rollout", "reward", "reference", "value")}
        return {"step": end - start, **split, "update": end - prepared,
                "other": prepared - start - sum(split.values())}

    return step


def ppo_main() -> None:
    """Time our PPO step and its parts; print a table and a JSON line."""
    from llm import metrics
    from llm.config import load_config

    completions = _PROMPTS.value * _G.value
    try:
        config = load_config(f"configs/ppo.py:model={_SIZE.value}", [
            f"batch_size={completions}", f"rl.max_prompt_length={_PROMPT_LEN.value}",
            f"rl.max_completion_length={_NEW.value}", f"model.dtype={_DTYPE.value}",
            f"ppo.num_ppo_epochs={_EPOCHS.value}", "workdir=/tmp/bench_rl_unused",
            "rl.log_samples_every=0", "optim.lr=1e-5"])
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    rng = np.random.default_rng(0)
    prompt_BP = rng.integers(2, int(config.model.vocab_size),
                             (completions, _PROMPT_LEN.value)).astype(np.int32)
    step = build_ppo(config, prompt_BP)
    peak, peak_source = metrics.device_peak_flops()
    step(0)  # compiles
    splits = [step(i + 1) for i in range(_STEPS.value)]
    med = {k: statistics.median(s[k] for s in splits) for k in splits[0]}
    result = {"algo": "ppo", "size": _SIZE.value, "completions": completions,
              "new_tokens": _NEW.value, "ppo_epochs": _EPOCHS.value, "dtype": _DTYPE.value,
              "peak_flops": peak, "peak_source": peak_source,
              "ours_samples_per_s": round(completions / med["step"], 2),
              **{f"ours_{k}_s": round(v, 4) for k, v in med.items()}}
    print(f"PPO step: {completions} prompts x 1 completion, {_NEW.value} new tokens, "
          f"{_EPOCHS.value} epoch(s), {_SIZE.value} {_DTYPE.value}; fp32 matmul peak "
          f"{peak / 1e9:.0f} GFLOP/s ({peak_source}); no peer (TRL's PPO is experimental)")
    print(" ".join(f"{k:>9s}" for k in med))
    print(" ".join(f"{v:9.3f}" for v in med.values()))
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
