"""DPO step cost over an SFT step on the same [2B, T] tokens.

    python scripts/bench_dpo.py [--model=small] [--pairs=8] [--seq=256] [--steps=5]

Times three jitted updates (value_and_grad of the task's own loss + AdamW) on one device:
SFT (masked CE over 2B rows), DPO with the reference forward in the step, and DPO with the
reference log-probs given (what `dpo.precompute_ref_log_probs` would feed). Prints a table
and, as the last line, one JSON object; the XLA fp32 matmul peak of the run is beside it.
"""

from __future__ import annotations

import json
import statistics
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import app, flags
from flax import nnx

from configs import models
from llm import losses, metrics
from llm.config import load_config
from llm.model import ModelConfig, Transformer
from llm.train import dpo

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "small", "Model size from configs/models.py.")
flags.DEFINE_integer("pairs", 8, "Preference pairs per step (2x rows).")
flags.DEFINE_integer("seq", 256, "Tokens per row.")
flags.DEFINE_integer("steps", 5, "Timed steps after the compile.")


def pair_batch(pairs: int, seq: int, vocab: int) -> dict[str, np.ndarray]:
    """Random chosen/rejected rows: a quarter prompt, the rest completion."""
    rng = np.random.default_rng(0)
    out = {}
    for name in ("chosen", "rejected"):
        tokens = rng.integers(0, vocab, (pairs, seq + 1)).astype(np.int32)
        mask = np.zeros((pairs, seq), np.float32)
        mask[:, seq // 4:] = 1.0
        out.update({f"{name}_tokens": tokens[:, :-1], f"{name}_targets": tokens[:, 1:],
                    f"{name}_positions": np.tile(np.arange(seq, dtype=np.int32), (pairs, 1)),
                    f"{name}_segment_ids": np.ones((pairs, seq), np.int32),
                    f"{name}_loss_mask": mask})
    return out


def time_step(loss_fn, params, side, batch, steps: int) -> float:
    """Median seconds of one jitted AdamW update on `loss_fn(params, side, batch)`."""
    opt = optax.adamw(1e-5)

    def step(params, opt_state, side, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, side, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(
        params, opt.init(params), side, batch).compile()
    params = jax.tree.map(jnp.copy, params)  # the step donates its arguments
    state = (params, opt.init(params))
    times = []
    for _ in range(steps + 1):  # the first is a warm-up
        start = time.perf_counter()
        *state, loss = compiled(*state, side, batch)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main(argv: list[str]) -> None:
    """Time SFT, DPO and DPO with given reference log-probs; print the table and JSON."""
    del argv
    cfg = ModelConfig(**{k: v for k, v in models.model_config(FLAGS.model).to_dict().items()
                         if k != "size"})
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    reference = jax.tree.map(jnp.copy, params)
    batch = {k: jnp.asarray(v) for k, v in pair_batch(FLAGS.pairs, FLAGS.seq,
                                                       cfg.vocab_size).items()}
    task = dpo.DpoTask(load_config(f"configs/dpo.py:model={FLAGS.model}"))
    ref_2P, _ = jax.jit(lambda p, b: dpo.pair_logps(nnx.merge(graphdef, p), b))(
        reference, batch)

    def sft_loss(p, side, b):
        logits, _ = nnx.merge(graphdef, p)(dpo.both_rows(b, "tokens"),
                                           dpo.both_rows(b, "positions"),
                                           dpo.both_rows(b, "segment_ids"))
        total, sums = losses.masked_cross_entropy(logits, dpo.both_rows(b, "targets"),
                                                  dpo.both_rows(b, "loss_mask"))
        return total / sums["weight"]

    def dpo_loss(p, side, b):
        total, _ = task.loss(nnx.merge(graphdef, p), {"reference": nnx.merge(graphdef, side)},
                             b, None)
        return total / FLAGS.pairs

    def dpo_given_reference(p, ref_2P, b):
        logps_2P, _ = dpo.pair_logps(nnx.merge(graphdef, p), b)
        delta_P = (logps_2P[:FLAGS.pairs] - ref_2P[:FLAGS.pairs]) - (
            logps_2P[FLAGS.pairs:] - ref_2P[FLAGS.pairs:])
        return jnp.mean(losses.dpo_sigmoid(delta_P, 0.1))

    rows: dict[str, Any] = {
        "sft": time_step(sft_loss, params, reference, batch, FLAGS.steps),
        "dpo": time_step(dpo_loss, params, reference, batch, FLAGS.steps),
        "dpo_given_reference": time_step(dpo_given_reference, params, ref_2P, batch,
                                         FLAGS.steps)}
    peak = metrics.measure_peak()
    print(f"model={FLAGS.model} pairs={FLAGS.pairs} seq={FLAGS.seq} rows/step={2 * FLAGS.pairs}"
          f" backend={jax.default_backend()} fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, seconds in rows.items():
        print(f"{name:22} {seconds:8.4f} s  {seconds / rows['sft']:5.2f}x SFT")
    print(json.dumps({"bench": "dpo", "model": FLAGS.model, "pairs": FLAGS.pairs,
                      "seq": FLAGS.seq, "step_s": rows,
                      "dpo_over_sft": rows["dpo"] / rows["sft"],
                      "dpo_given_reference_over_sft": rows["dpo_given_reference"] / rows["sft"],
                      "matmul_peak_flops": peak, "peer": None}))


if __name__ == "__main__":
    app.run(main)
