"""Training throughput: tokens/s and MFU of our train step, against Hugging Face on torch.

    python scripts/bench_train.py --model=small --batch=16 --seq=256 --steps=10 --peer=hf

Ours: the loop's own jitted step (`llm/train/state.py`, AdamW, fp32) on random tokens.
Peer (`--peer=hf`): transformers `LlamaForCausalLM` with the same shapes and
`torch.optim.AdamW`, eager and under `torch.compile`. MFU on CPU is measured against a large
jitted fp32 matmul on this host (`llm.metrics.measure_peak`); on accelerators against the
datasheet peak. Prints a table, then one JSON line.

Each implementation is built and warmed up once; then the run alternates `--rounds` times
between them (ours, then the peers), timing `--steps` steps each time after one untimed
step. Each keeps its fastest round: a shared VM drifts by 10-25% over minutes, and
alternation lets that drift reach every side alike. `ratio_rounds` holds each round's own
ratio of ours to the faster peer, so the spread is on record.
"""

from __future__ import annotations

import json
import pathlib
import sys
import time
from collections.abc import Callable

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

_MODEL = flags.DEFINE_string("model", "small", "size from configs/models.py")
_BATCH = flags.DEFINE_integer("batch", 16, "sequences per step", lower_bound=1)
_SEQ = flags.DEFINE_integer("seq", 256, "tokens per sequence", lower_bound=1)
_STEPS = flags.DEFINE_integer("steps", 10, "timed steps per round (after one untimed step)",
                              lower_bound=1)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "alternations of ours and the peers", lower_bound=1)
_DTYPE = flags.DEFINE_string("dtype", "float32", "compute dtype: float32 | bfloat16")
_ATTENTION = flags.DEFINE_string("attention", "xla", "xla | cudnn | splash")
_REMAT = flags.DEFINE_string("remat", "none", "remat policy")
_PEER = flags.DEFINE_enum("peer", "none", ["none", "hf"], "also time transformers on torch")
_RETAIN = flags.DEFINE_bool("retain_host_memory", True,
                            "llm.host_memory.retain_freed_memory() first (it applies to the "
                            "whole process, the peer included)")


def ours_steps(model_cfg, batch: int, seq: int) -> Callable[[int], None]:
    """run(n): n of our jitted, donated train steps, dispatched back to back and waited for
    at the end, as the loop runs them (compiled here)."""
    import jax
    import numpy as np
    from flax import nnx

    from configs.base import optim_section
    from llm import losses, optim
    from llm.model import Transformer
    from llm.train import state as state_lib
    from llm.train.guard import UpdateGuard
    from llm.train.task import Task

    class LMTask(Task):
        def loss(self, model, side, b, rng):
            logits, _ = model(b["tokens"])
            return losses.masked_cross_entropy(logits, b["targets"], b["loss_mask"])

    section = optim_section()
    section.warmup_steps = 0
    tx, schedule = optim.make_optimizer(section, 1000)
    graphdef, params = nnx.split(Transformer(model_cfg, nnx.Rngs(0)))
    guard = UpdateGuard(tx)
    step = jax.jit(state_lib.make_train_step(LMTask(None), graphdef, {}, guard, schedule,
                                             grad_accum=1, use_dropout=False),
                   donate_argnums=0)
    state = state_lib.new_state(params, guard, 0)
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, model_cfg.vocab_size, (batch, seq + 1)).astype(np.int32)
    data = {"tokens": tokens[:, :-1], "targets": tokens[:, 1:],
            "loss_mask": np.ones((batch, seq), np.float32)}
    data = jax.device_put(data)
    carry = [state]

    def run(n: int) -> None:
        for _ in range(n):
            carry[0], metrics = step(carry[0], nnx.State({}), {}, data, np.int32(0))
        jax.block_until_ready(metrics)

    run(1)
    return run


def hf_steps(model_cfg, batch: int, seq: int, compiled: bool) -> Callable[[int], None]:
    """run(n): n steps of transformers LlamaForCausalLM + torch AdamW, same shapes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=model_cfg.vocab_size, hidden_size=model_cfg.d_model,
        intermediate_size=model_cfg.d_ff, num_hidden_layers=model_cfg.n_layers,
        num_attention_heads=model_cfg.n_heads, num_key_value_heads=model_cfg.n_kv_heads,
        head_dim=model_cfg.head_dim, max_position_embeddings=model_cfg.max_seq_len,
        rms_norm_eps=model_cfg.norm_eps, rope_theta=model_cfg.rope_theta,
        tie_word_embeddings=model_cfg.tie_embeddings, attn_implementation="sdpa")
    model = LlamaForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
    tokens = torch.randint(0, model_cfg.vocab_size, (batch, seq))

    def step():
        loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    if compiled:
        step = torch.compile(step)

    def run(n: int) -> None:
        for _ in range(n):
            step()

    run(1)
    return run


def seconds_per_step(run: Callable[[int], None], steps: int) -> float:
    """Mean seconds per step of run(steps), after one untimed step."""
    run(1)
    start = time.perf_counter()
    run(steps)
    return (time.perf_counter() - start) / steps


def main(argv: list[str]) -> None:
    """Time ours (and the peer), print a table and a JSON line."""
    del argv
    from configs import models
    from llm import host_memory, metrics
    from llm.model import ModelConfig

    retained = _RETAIN.value and host_memory.retain_freed_memory()
    try:  # an unknown size, dtype, attention or remat policy: one line, not a traceback
        values = {k: v for k, v in models.model_config(_MODEL.value).items() if k != "size"}
        values.update(dtype=_DTYPE.value, attention=_ATTENTION.value, remat=_REMAT.value)
        model_cfg = ModelConfig.from_dict(values)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    batch, seq, steps = _BATCH.value, _SEQ.value, _STEPS.value
    tokens = batch * seq
    flops_per_token = metrics.train_flops_per_token(model_cfg, seq)
    peak, peak_source = metrics.device_peak_flops()
    runners = {"ours": ours_steps(model_cfg, batch, seq)}
    if _PEER.value == "hf":
        runners["hf_eager"] = hf_steps(model_cfg, batch, seq, compiled=False)
        try:
            runners["hf_compile"] = hf_steps(model_cfg, batch, seq, compiled=True)
        except Exception as error:  # torch.compile needs a C++ toolchain; report, go on
            print(f"torch.compile failed: {type(error).__name__}: {error}"[:300])
    rounds = {name: [] for name in runners}
    for _ in range(_ROUNDS.value):
        for name, run in runners.items():
            rounds[name].append(seconds_per_step(run, steps))
    rows = {name: min(times) for name, times in rounds.items()}
    print(f"model={_MODEL.value} batch={batch} seq={seq} dtype={_DTYPE.value} "
          f"peak={peak / 1e9:.0f} GFLOP/s ({peak_source})")
    print(f"{'':12s} {'s/step':>8s} {'tokens/s':>10s} {'MFU':>7s}")
    result = {"model": _MODEL.value, "batch": batch, "seq": seq, "dtype": _DTYPE.value,
              "peak_flops": peak, "peak_source": peak_source, "retain_host_memory": retained}
    for name, seconds in rows.items():
        tps = tokens / seconds
        mfu = tps * flops_per_token / peak
        print(f"{name:12s} {seconds:8.3f} {tps:10,.0f} {mfu:7.1%}")
        result[f"{name}_tokens_per_s"] = round(tps, 1)
        result[f"{name}_mfu"] = round(mfu, 4)
    peers = [name for name in rounds if name != "ours"]
    if peers:
        best_peer = max(peers, key=lambda name: result[f"{name}_tokens_per_s"])
        result["ratio_vs_best_peer"] = round(rows[best_peer] / rows["ours"], 2)
        result["ratio_rounds"] = [round(min(peer_s) / ours_s, 2) for ours_s, *peer_s in
                                  zip(rounds["ours"], *(rounds[p] for p in peers), strict=True)]
        print(f"ours / faster peer: {result['ratio_vs_best_peer']:.2f} "
              f"(per round: {result['ratio_rounds']})")
    print(json.dumps(result))


if __name__ == "__main__":
    app.run(main)
