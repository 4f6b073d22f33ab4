"""DPO step cost over an SFT step on the same [2B, T] tokens.

    python scripts/bench_dpo.py [--model=small] [--pairs=8] [--seq=256] [--steps=5]

Times three jitted updates (value_and_grad of the task's own loss + AdamW) on one device:
SFT (masked CE over 2B rows), DPO with the reference forward in the step, and DPO with the
reference log-probs given (what `dpo.precompute_ref_log_probs` would feed). With
`--peer=trl`, also in the same run: TRL's `DPOTrainer` (sigmoid loss, reference model in the
step) on the fp32 export of the same weights, the same pairs as text, batch and `max_length`,
and a plain transformers train step (masked CE + AdamW) on the same [2B, T] tokens, so the
DPO ratio can be read beside the plain-step ratio. Prints a table and, as the last line, one
JSON object; the XLA fp32 matmul peak of the run is beside it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
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
from llm.hf import peer as peer_lib
from llm.model import ModelConfig, Transformer
from llm.train import dpo

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "small", "Model size from configs/models.py.")
flags.DEFINE_integer("pairs", 8, "Preference pairs per step (2x rows).", lower_bound=1)
flags.DEFINE_integer("seq", 256, "Tokens per row.", lower_bound=1)
flags.DEFINE_integer("steps", 5, "Timed steps after the compile.", lower_bound=1)
flags.DEFINE_enum("peer", "none", ["none", "trl"], "Also time TRL's DPOTrainer on torch.")


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
    state = [params, opt.init(params)]

    def run_step() -> None:
        state[0], state[1], loss = compiled(*state, side, batch)
        loss.block_until_ready()

    return median_step_s(run_step, steps)


def median_step_s(run_step: Callable[[], None], steps: int) -> float:
    """Median seconds of `steps` calls after one warm-up call."""
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        run_step()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def trl_peer(cfg: ModelConfig, params: Any, batch: dict[str, np.ndarray], steps: int
             ) -> dict[str, float]:
    """Seconds per step of TRL's DPOTrainer and of a plain transformers train step, and the
    non-padding tokens TRL's batches hold (its collator pads to the longest row)."""
    import datasets
    import torch
    import transformers
    import trl

    pairs, seq = batch["chosen_tokens"].shape
    cut = seq // 4  # pair_batch's prompt share
    words = lambda ids: peer_lib.words(np.maximum(ids, 4))  # noqa: E731  (no special ids)
    rows = {"prompt": [words(r[:cut]) for r in batch["chosen_tokens"]],
            "chosen": [words(r[cut:]) for r in batch["chosen_tokens"]],
            "rejected": [words(r[cut:]) for r in batch["rejected_tokens"]]}
    with tempfile.TemporaryDirectory() as tmp:
        peer_lib.export_for_peer(cfg, params, tmp)
        load = lambda: transformers.LlamaForCausalLM.from_pretrained(  # noqa: E731
            tmp, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp)
        args = trl.DPOConfig(os.path.join(tmp, "trl"), loss_type=["sigmoid"], beta=0.1,
                             per_device_train_batch_size=pairs, max_length=seq,
                             learning_rate=1e-5, max_steps=steps + 1, use_cpu=True,
                             bf16=False, report_to=[], save_strategy="no",
                             logging_steps=10**6, dataloader_num_workers=0)
        trainer = trl.DPOTrainer(model=load(), ref_model=load(), args=args,
                                 train_dataset=datasets.Dataset.from_dict(
                                     {k: v * (steps + 1) for k, v in rows.items()}),
                                 processing_class=tokenizer)
        timer = peer_lib.step_timer()
        trainer.add_callback(timer)
        trainer.train()
        trl_tokens = sum(min(len(p) + len(c), seq) for p, c in (
            (tokenizer(rows["prompt"][i])["input_ids"], tokenizer(rows[k][i])["input_ids"])
            for k in ("chosen", "rejected") for i in range(pairs)))

        model = load().train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
        tokens = torch.as_tensor(np.concatenate([batch["chosen_tokens"],
                                                 batch["rejected_tokens"]]), dtype=torch.long)
        labels = tokens.clone()
        labels[:, :cut] = -100  # the prompt is not scored, as in the SFT step

        def hf_step() -> None:
            opt.zero_grad()
            model(input_ids=tokens, labels=labels).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()

        hf_plain = median_step_s(hf_step, steps)
    return {"trl_dpo_s": statistics.median(timer.seconds[1:]), "trl_tokens": trl_tokens,
            "hf_plain_s": hf_plain, "torch_threads": torch.get_num_threads()}


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
    peer = None
    if FLAGS.peer == "trl":
        peer = trl_peer(cfg, params, jax.device_get(batch), FLAGS.steps)
    peak = metrics.measure_peak()
    print(f"model={FLAGS.model} pairs={FLAGS.pairs} seq={FLAGS.seq} rows/step={2 * FLAGS.pairs}"
          f" backend={jax.default_backend()} fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    for name, seconds in rows.items():
        print(f"{name:22} {seconds:8.4f} s  {seconds / rows['sft']:5.2f}x SFT")
    record = {"bench": "dpo", "model": FLAGS.model, "pairs": FLAGS.pairs,
              "seq": FLAGS.seq, "step_s": rows,
              "dpo_over_sft": rows["dpo"] / rows["sft"],
              "dpo_given_reference_over_sft": rows["dpo_given_reference"] / rows["sft"],
              "matmul_peak_flops": peak, "peer": FLAGS.peer if peer else None}
    if peer:
        ours_tps = 2 * FLAGS.pairs * FLAGS.seq / rows["dpo"]  # no padding: every row is full
        trl_tps = peer["trl_tokens"] / peer["trl_dpo_s"]
        print(f"{'trl DPOTrainer':22} {peer['trl_dpo_s']:8.4f} s  {trl_tps:8.0f} tokens/s "
              f"(ours {ours_tps:.0f}: {ours_tps / trl_tps:.2f}x)")
        print(f"{'transformers plain step':22} {peer['hf_plain_s']:8.4f} s  (our SFT step "
              f"{peer['hf_plain_s'] / rows['sft']:.2f}x its speed)")
        record.update({"peer_step_s": {"trl_dpo": peer["trl_dpo_s"],
                                       "hf_plain": peer["hf_plain_s"]},
                       "ours_tokens_per_s": ours_tps, "trl_tokens_per_s": trl_tps,
                       "ratio_vs_trl": ours_tps / trl_tps,
                       "plain_step_ratio_vs_hf": peer["hf_plain_s"] / rows["sft"],
                       "torch_threads": peer["torch_threads"]})
    print(json.dumps(record))

if __name__ == "__main__":
    app.run(main)
