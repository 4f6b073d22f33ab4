"""Fine-tuning cost: full vs LoRA vs QLoRA vs prefix tuning on one batch.

    python scripts/bench_finetune.py [--model=small] [--batch=8] [--seq=256] [--steps=5]

Per method: median step time, the compiled step's memory analysis (arguments, temporaries),
the process's peak RSS (each method runs in its own subprocess so peaks do not mix), the
trainable parameter count, and for QLoRA the bytes per quantised base weight over the
quantised linear kernels (embeddings/head and norms reported separately, in their own
dtype). Prints a table, then one JSON object as the last line.
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import jax
import optax
from absl import app, flags
from flax import nnx

from llm.model import ModelConfig, Transformer
from llm.peft import methods as peft
from llm.peft import quant

# The shapes docs/benchmarks.md's fine-tuning figures were measured with: `small` is
# configs/models.py's but with scan-stacked layers (its default there is now unrolled).
MODELS = {
    "tiny": ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                        head_dim=16, d_ff=192, max_seq_len=256),
    "small": ModelConfig(vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4,
                         head_dim=32, d_ff=704, max_seq_len=256),
}
METHODS = ("none", "lora", "qlora", "prefix")

FLAGS = flags.FLAGS
flags.DEFINE_enum("model", "small", list(MODELS), "Model size.")
flags.DEFINE_integer("batch", 8, "Sequences per step.")
flags.DEFINE_integer("seq", 256, "Tokens per sequence.")
flags.DEFINE_integer("steps", 5, "Timed steps after the compile.")
flags.DEFINE_string("only", "", "Run one method in this process (used by the driver).")
flags.DEFINE_integer("rank", 8, "LoRA rank (lora, qlora).")
flags.DEFINE_integer("prefix_len", 16, "Prefix length (prefix).")


def peft_config(method: str) -> Any:
    """The `peft` section for one benchmarked method."""
    cfg = peft.peft_section()
    cfg.method, cfg.rank, cfg.prefix_len = method, FLAGS.rank, FLAGS.prefix_len
    return cfg


def bench_method(method: str, model_cfg: ModelConfig, batch: int, seq: int,
                 steps: int) -> dict[str, Any]:
    """Build, compile and time one fine-tuning step for `method`; returns its figures."""
    cfg = peft_config(method)
    model_cfg = dataclasses.replace(model_cfg, **peft.model_config_overrides(cfg))
    model = peft.apply_peft(Transformer(model_cfg, nnx.Rngs(0)), cfg, nnx.Rngs(1))
    graphdef, params, frozen = nnx.split(model, peft.trainable_filter(cfg), ...)
    opt = optax.adamw(1e-4)
    opt_state = opt.init(params)

    def loss_fn(params, frozen, tokens):
        logits, _ = nnx.merge(graphdef, params, frozen)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    def step(params, opt_state, frozen, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, tokens)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    tokens = jax.random.randint(jax.random.key(0), (batch, seq + 1), 0, model_cfg.vocab_size)
    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, frozen,
                                                          tokens).compile()
    compile_s = time.perf_counter() - start
    mem = compiled.memory_analysis()
    params, opt_state, loss = compiled(params, opt_state, frozen, tokens)  # warm-up
    loss.block_until_ready()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, frozen, tokens)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
    out = {
        "method": method,
        "step_s": statistics.median(times),
        "compile_s": compile_s,
        "trainable_params": sum(x.size for x in jax.tree.leaves(params)),
        "frozen_bytes": sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(frozen)),
        "xla_argument_bytes": mem.argument_size_in_bytes,
        "xla_temp_bytes": mem.temp_size_in_bytes,
        "xla_output_bytes": mem.output_size_in_bytes,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "loss": float(loss),
    }
    if method == "qlora":
        out.update(storage_breakdown(model))
    return out


def storage_breakdown(model: nnx.Module) -> dict[str, Any]:
    """Bytes per quantised base weight, and the float embeddings/head and norms beside it."""
    counted = quant.quantized_bytes(model)
    embed = norms = 0
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        nbytes = var[...].size * var[...].dtype.itemsize
        if path[0] in ("embed", "pos_embed", "lm_head"):
            embed += nbytes
        elif any("norm" in str(k) for k in path):
            norms += nbytes
    return {"quantised_weights": counted["weights"], "quantised_bytes": counted["bytes"],
            "bytes_per_quantised_param": counted["bytes"] / counted["weights"],
            "embed_head_bytes_fp32": embed, "norm_bytes_fp32": norms}


def run_isolated(method: str) -> dict[str, Any]:
    """Run one method in a fresh process (its own peak RSS) and parse its JSON line."""
    args = [sys.executable, __file__, f"--only={method}", f"--model={FLAGS.model}",
            f"--batch={FLAGS.batch}", f"--seq={FLAGS.seq}", f"--steps={FLAGS.steps}",
            f"--rank={FLAGS.rank}", f"--prefix_len={FLAGS.prefix_len}"]
    done = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    """Run every method in its own process, print the table and the JSON line."""
    del argv
    model_cfg = MODELS[FLAGS.model]
    if FLAGS.only:
        print(json.dumps(bench_method(FLAGS.only, model_cfg, FLAGS.batch, FLAGS.seq,
                                      FLAGS.steps)))
        return
    rows = [run_isolated(m) for m in METHODS]
    mib = 1 / 2**20
    print(f"model={FLAGS.model} batch={FLAGS.batch}x{FLAGS.seq} backend={jax.default_backend()}"
          f" devices={jax.device_count()} rank={FLAGS.rank} prefix_len={FLAGS.prefix_len}")
    header = (f"{'method':8} {'step s':>7} {'trainable':>10} {'frozen MiB':>10} "
              f"{'XLA args MiB':>12} {'XLA temp MiB':>12} {'peak RSS MiB':>12}")
    print(header)
    print("-" * len(header))
    full = rows[0]
    for r in rows:
        print(f"{r['method']:8} {r['step_s']:7.3f} {r['trainable_params']:10,d} "
              f"{r['frozen_bytes'] * mib:10.1f} {r['xla_argument_bytes'] * mib:12.1f} "
              f"{r['xla_temp_bytes'] * mib:12.1f} {r['peak_rss_bytes'] * mib:12.1f}")
    q = next(r for r in rows if r["method"] == "qlora")
    print(f"QLoRA NF4 base: {q['quantised_weights']:,d} quantised weights in "
          f"{q['quantised_bytes']:,d} bytes = {q['bytes_per_quantised_param']:.4f} B/param "
          f"(target <= 0.55); float embeddings+head {q['embed_head_bytes_fp32'] * mib:.1f} MiB,"
          f" norms {q['norm_bytes_fp32'] / 1024:.1f} KiB")
    summary = {
        "bench": "finetune", "model": FLAGS.model, "batch": FLAGS.batch, "seq": FLAGS.seq,
        "backend": jax.default_backend(),
        "methods": {r["method"]: r for r in rows},
        "speedup_vs_full": {r["method"]: full["step_s"] / r["step_s"] for r in rows},
        "bytes_per_quantised_param_nf4": q["bytes_per_quantised_param"],
        "peer": None,
    }
    assert math.isfinite(summary["bytes_per_quantised_param_nf4"])
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
