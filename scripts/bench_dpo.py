"""DPO step cost over an SFT step on the same [2B, T] tokens.

    python scripts/bench_dpo.py [--model=small] [--pairs=8] [--seq=256] [--steps=5] \
        [--peer=trl] [--mixed_batches=8]

Times three jitted updates (value_and_grad of the task's own loss + AdamW) on one device:
SFT (masked CE over 2B rows), DPO with the reference forward in the step, and DPO with the
reference log-probs given (the batch `dpo.precompute_ref_log_probs` feeds). With
`--peer=trl`, also in the same run: TRL's `DPOTrainer` (sigmoid loss, reference model in the
step) on the fp32 export of the same weights, the same pairs as text, batch and `max_length`,
and a plain transformers train step (masked CE + AdamW) on the same [2B, T] tokens, so the
DPO ratio can be read beside the plain-step ratio. `--mixed_batches=N` also times N batches
of pairs of mixed lengths by non-padding tokens/s: ours cut to length buckets as the task
cuts them, ours padded to --seq, and (with --peer=trl) TRL, whose collator pads each batch
to its longest row. Prints a table and, as the last line, one JSON object; the XLA fp32
matmul peak of the run is beside it.
"""

from __future__ import annotations

import functools
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
flags.DEFINE_integer("mixed_batches", 0, "Also time this many batches of mixed-length pairs "
                     "(ours in length buckets, ours padded, TRL with --peer=trl).",
                     lower_bound=0)


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


def mixed_batches(batches: int, pairs: int, seq: int, vocab: int
                  ) -> tuple[list[dict], list[dict[str, list]]]:
    """Batches of pairs of mixed lengths as the loader gives them (padded to seq), and the
    same pairs as id lists ({prompt, chosen, rejected}). Lengths are long-tailed, as in
    preference sets: a prompt of seq/16 + Exp(mean seq/16) tokens (at most seq/4) shared by
    both answers, each answer seq/16 + Exp(mean seq/8) tokens (at most 3seq/4)."""
    from llm.data import loaders

    rng = np.random.default_rng(1)

    def length(mean: float, cap: int) -> int:
        return int(min(max(seq // 16, 1) + rng.exponential(mean), cap))

    out, pieces = [], []
    for _ in range(batches):
        rows = {"chosen": [], "rejected": []}
        ids: dict[str, list] = {"prompt": [], "chosen": [], "rejected": []}
        for _ in range(pairs):
            prompt = rng.integers(4, vocab, length(seq / 16, seq // 4))
            ids["prompt"].append(prompt)
            for name in rows:
                answer = rng.integers(4, vocab, length(seq / 8, 3 * seq // 4))
                ids[name].append(answer)
                mask = np.r_[np.zeros(len(prompt)), np.ones(len(answer))].astype(np.float32)
                rows[name].append(loaders.pack_row([(np.r_[prompt, answer], mask)], seq, 0))
        out.append({f"{name}_{k}": np.stack([r[k] for r in rows[name]])
                    for name in rows for k in rows[name][0]})
        pieces.append(ids)
    return out, pieces


def trl_mixed(cfg: ModelConfig, params: Any, pieces: list[dict[str, list]], pairs: int,
              seq: int) -> dict[str, float]:
    """Seconds of TRL's DPOTrainer over the mixed-length batches in order (after one
    warm-up batch) and the non-padding tokens it trained on."""
    import torch
    import transformers

    rows = {k: [peer_lib.words(ids) for batch in [pieces[0], *pieces] for ids in batch[k]]
            for k in ("prompt", "chosen", "rejected")}
    with tempfile.TemporaryDirectory() as tmp:
        peer_lib.export_for_peer(cfg, params, tmp)
        tokenizer = transformers.AutoTokenizer.from_pretrained(tmp)
        seconds = trl_dpo_steps(tmp, lambda: transformers.LlamaForCausalLM.from_pretrained(
            tmp, dtype=torch.float32), tokenizer, rows, pairs, seq)
        timed = {k: v[pairs:] for k, v in rows.items()}
        return {"trl_s": sum(seconds[1:]), "trl_tokens": trl_real_tokens(tokenizer, timed, seq)}


def mixed_ours(cfg: ModelConfig, params: Any, reference: Any, dpo_loss
               ) -> tuple[dict[str, Any], list[dict[str, list]]]:
    """Non-padding tokens/s of our DPO step on mixed-length pairs, cut to length buckets
    (as the task does) and padded to --seq; and the pairs as ids, for TRL. Run before any
    torch work: torch's idle threads keep spinning on the cores for a while."""
    from llm.data import buckets

    batches, pieces = mixed_batches(FLAGS.mixed_batches, FLAGS.pairs, FLAGS.seq,
                                    cfg.vocab_size)
    tokens = sum(real_tokens(b) for b in batches)
    bucketed = [buckets.trim_batch(b, FLAGS.seq, 0) for b in batches]
    out: dict[str, Any] = {
        "batches": len(batches), "real_tokens": tokens,
        "widths": sorted({b["chosen_tokens"].shape[1] for b in bucketed}),
        "ours_tokens_per_s": tokens / time_pass(dpo_loss, params, reference, bucketed),
        "ours_padded_tokens_per_s": tokens / time_pass(dpo_loss, params, reference, batches)}
    out["bucket_speedup"] = out["ours_tokens_per_s"] / out["ours_padded_tokens_per_s"]
    print(f"mixed lengths, {len(batches)} batches: ours {out['ours_tokens_per_s']:.0f} "
          f"tokens/s in buckets {out['widths']}, {out['ours_padded_tokens_per_s']:.0f} padded "
          f"to {FLAGS.seq} ({out['bucket_speedup']:.2f}x)")
    return out, pieces


def real_tokens(batch: dict) -> int:
    """Non-padding tokens of a pair batch (chosen and rejected rows)."""
    return int(sum((batch[f"{n}_segment_ids"] > 0).sum() for n in ("chosen", "rejected")))


def adamw_step(loss_fn) -> tuple[optax.GradientTransformation, Callable]:
    """(AdamW, its jitted update on `loss_fn(params, side, batch)`, donating params and
    optimiser state)."""
    opt = optax.adamw(1e-5)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def step(params, opt_state, side, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, side, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return opt, step


def time_pass(loss_fn, params, side, batches: list[dict]) -> float:
    """Seconds of one pass of jitted AdamW updates over `batches`, after a warm-up pass
    that compiles every batch shape."""
    opt, step = adamw_step(loss_fn)
    params = jax.tree.map(jnp.copy, params)  # the step donates its arguments
    state = [params, opt.init(params)]
    batches = [{k: jnp.asarray(v) for k, v in b.items()} for b in batches]
    seconds = 0.0
    for timed in (False, True):
        for batch in batches:
            start = time.perf_counter()
            state[0], state[1], loss = step(*state, side, batch)
            loss.block_until_ready()
            seconds += (time.perf_counter() - start) * timed
    return seconds


def time_step(loss_fn, params, side, batch, steps: int) -> float:
    """Median seconds of one jitted AdamW update on `loss_fn(params, side, batch)` (the
    first, compiling call untimed)."""
    opt, step = adamw_step(loss_fn)
    params = jax.tree.map(jnp.copy, params)  # the step donates its arguments
    state = [params, opt.init(params)]

    def run_step() -> None:
        state[0], state[1], loss = step(*state, side, batch)
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


def trl_dpo_steps(tmp: str, load: Callable[[], Any], tokenizer: Any, rows: dict[str, list],
                  pairs: int, seq: int) -> list[float]:
    """Seconds of each step of TRL's DPOTrainer (sigmoid, reference model in the step) over
    `rows` in order, `pairs` per batch; its collator pads each batch to its longest row."""
    import datasets
    import trl

    args = trl.DPOConfig(os.path.join(tmp, "trl"), loss_type=["sigmoid"], beta=0.1,
                         per_device_train_batch_size=pairs, max_length=seq,
                         learning_rate=1e-5, max_steps=len(rows["prompt"]) // pairs,
                         use_cpu=True, bf16=False, report_to=[], save_strategy="no",
                         logging_steps=10**6, dataloader_num_workers=0,
                         train_sampling_strategy="sequential")
    trainer = trl.DPOTrainer(model=load(), ref_model=load(), args=args,
                             train_dataset=datasets.Dataset.from_dict(rows),
                             processing_class=tokenizer)
    timer = peer_lib.step_timer()
    trainer.add_callback(timer)
    trainer.train()
    return timer.seconds


def trl_real_tokens(tokenizer: Any, rows: dict[str, list], seq: int) -> int:
    """Non-padding tokens of `rows` as TRL builds them (prompt + completion, cut at seq)."""
    return sum(min(len(tokenizer(rows["prompt"][i])["input_ids"])
                   + len(tokenizer(rows[k][i])["input_ids"]), seq)
               for k in ("chosen", "rejected") for i in range(len(rows["prompt"])))


def trl_peer(cfg: ModelConfig, params: Any, batch: dict[str, np.ndarray], steps: int
             ) -> dict[str, float]:
    """Seconds per step of TRL's DPOTrainer and of a plain transformers train step, and the
    non-padding tokens TRL's batches hold (its collator pads to the longest row)."""
    import torch
    import transformers

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
        seconds = trl_dpo_steps(tmp, load, tokenizer,
                                {k: v * (steps + 1) for k, v in rows.items()}, pairs, seq)
        trl_tokens = trl_real_tokens(tokenizer, rows, seq)

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
    return {"trl_dpo_s": statistics.median(seconds[1:]), "trl_tokens": trl_tokens,
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

    def dpo_given_reference(p, ref_2P, b):  # the batch as dpo.precompute_ref_log_probs
        given = {**b, "ref_chosen_logps": ref_2P[:FLAGS.pairs],  # makes it: no side model
                 "ref_rejected_logps": ref_2P[FLAGS.pairs:]}
        total, _ = task.loss(nnx.merge(graphdef, p), {}, given, None)
        return total / FLAGS.pairs

    rows: dict[str, Any] = {
        "sft": time_step(sft_loss, params, reference, batch, FLAGS.steps),
        "dpo": time_step(dpo_loss, params, reference, batch, FLAGS.steps),
        "dpo_given_reference": time_step(dpo_given_reference, params, ref_2P, batch,
                                         FLAGS.steps)}
    if FLAGS.mixed_batches:
        mixed, pieces = mixed_ours(cfg, params, reference, dpo_loss)
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
    if FLAGS.mixed_batches:
        if FLAGS.peer == "trl":
            trl = trl_mixed(cfg, params, pieces, FLAGS.pairs, FLAGS.seq)
            mixed["trl_tokens_per_s"] = trl["trl_tokens"] / trl["trl_s"]
            mixed["ratio_vs_trl"] = mixed["ours_tokens_per_s"] / mixed["trl_tokens_per_s"]
            print(f"mixed lengths: trl DPOTrainer {mixed['trl_tokens_per_s']:.0f} tokens/s, "
                  f"ours {mixed['ratio_vs_trl']:.2f}x")
        record["mixed"] = mixed
    print(json.dumps(record))

if __name__ == "__main__":
    app.run(main)
