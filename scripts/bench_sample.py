"""Decode throughput of `llm.sampling.generate` vs Hugging Face `generate` on the same weights.

    python scripts/bench_sample.py --peer=hf

Random weights of a configs/models.py size (`small` by default) are copied into a
transformers `LlamaForCausalLM`; both sample `--new_tokens` tokens with top-p 0.9 and
temperature 0.7 after a `--prompt_len`-token prompt, at each batch size. Tokens/s counts
new tokens (batch * new_tokens) over the whole call, prefill included, best of --repeats
after one warm-up call (the first compiles). The run alternates --rounds times between all
of ours and all of the peer's, and each side keeps its best over every round: a shared VM
drifts by 10-25% over minutes, and alternation lets that drift reach both sides alike.
`ratio_rounds_b*` holds each round's own ratio, so the spread is on record. Prints a
table; the last line is one JSON object.

Batch-1 decode is memory-bound, so the JSON also holds `b1_weight_bandwidth_fraction`: the
bytes of weights a step streams (`llm.metrics.decode_weight_bytes`) times steps/s, over the
device's memory bandwidth (datasheet on GPU/TPU, a measured large jitted sum on CPU). It
counts prefill time against decode and ignores KV-cache reads, so it understates.
`--size=1b --dtype=bfloat16` on a GPU gives the issue's HBM-bandwidth figure.
"""

from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from configs import models
from llm import host_memory, metrics
from llm.model import ModelConfig, Transformer
from llm.sampling import decode as sampling

FLAGS = flags.FLAGS
flags.DEFINE_enum("peer", "hf", ["hf", "none"], "Implementation to compare against.")
flags.DEFINE_string("size", "small", "Model size from configs/models.py.")
flags.register_validator("size", lambda size: size in models.SIZES,
                         f"--size: expected one of {', '.join(models.SIZES)}")
flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to measure.")
flags.DEFINE_integer("new_tokens", 128, "New tokens per row (no EOS: every row runs to it).",
                     lower_bound=1)
flags.DEFINE_integer("prompt_len", 16, "Prompt tokens per row.", lower_bound=1)
flags.DEFINE_integer("repeats", 3, "Timed calls per setting and round (the best is kept).",
                     lower_bound=1)
flags.DEFINE_integer("rounds", 3, "Alternations of all of ours, then all of the peer's.",
                     lower_bound=1)
flags.DEFINE_float("temperature", 0.7, "Sampling temperature.")
flags.DEFINE_float("top_p", 0.9, "Nucleus mass.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                  "Parameter and compute dtype of the model (the peer stays float32).")
flags.DEFINE_bool("retain_host_memory", True, "llm.host_memory.retain_freed_memory() first "
                  "(it applies to the whole process, the peer included).")

def model_config(size: str, dtype: str = "float32") -> ModelConfig:
    """The named size from configs/models.py in the given dtype."""
    return ModelConfig.from_dict({**models.model_config(size), "dtype": dtype,
                                  "param_dtype": dtype})


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def ours(graphdef, params, prompt_BP: np.ndarray) -> tuple:
    """A zero-argument callable running our sampler to completion."""
    B, P = prompt_BP.shape
    sp = sampling.SamplingParams.create(B, temperature=FLAGS.temperature, top_p=FLAGS.top_p,
                                        max_new_tokens=FLAGS.new_tokens, seed=np.arange(B))
    lengths_B = np.full((B,), P, np.int32)

    def run():
        out = sampling.generate(graphdef, params, prompt_BP, lengths_B, sp)
        assert int(out.lengths_B.min()) == FLAGS.new_tokens
        return out

    return run


def to_hf(cfg: ModelConfig, params):
    """A transformers LlamaForCausalLM holding a copy of our weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hf_cfg = LlamaConfig(
        vocab_size=cfg.padded_vocab, hidden_size=cfg.d_model, intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim,
        max_position_embeddings=cfg.max_seq_len, rms_norm_eps=cfg.norm_eps,
        rope_theta=cfg.rope_theta, tie_word_embeddings=False, attention_bias=False)
    hf = LlamaForCausalLM(hf_cfg).eval()
    p = nnx.to_pure_dict(params)
    t = lambda x: torch.tensor(np.asarray(x, np.float32))
    sd = {"model.embed_tokens.weight": t(p["embed"]), "model.norm.weight":
          t(p["final_norm"]["scale"]), "lm_head.weight": t(p["lm_head"]["kernel"]).T}
    layers = p["layers"]

    def layer(i: int, *keys: str):
        """Layer i's weight at keys: per-layer dicts (unrolled) or stacked arrays (scan)."""
        node = layers[i] if i in layers else layers
        for key in keys:
            node = node[key]
        return node if i in layers else node[i]

    for i in range(cfg.n_layers):
        pre = f"model.layers.{i}."
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            sd[pre + f"self_attn.{name}.weight"] = t(layer(i, "attn", name, "kernel")).T
        for name in ("gate_proj", "up_proj", "down_proj"):
            sd[pre + f"mlp.{name}.weight"] = t(layer(i, "mlp", name, "kernel")).T
        sd[pre + "input_layernorm.weight"] = t(layer(i, "attn_norm", "scale"))
        sd[pre + "post_attention_layernorm.weight"] = t(layer(i, "mlp_norm", "scale"))
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return hf


def peer(hf, prompt_BP: np.ndarray):
    """A zero-argument callable running transformers' generate with the same settings."""
    import torch

    input_ids = torch.tensor(prompt_BP, dtype=torch.long)

    def run():
        with torch.no_grad():
            out = hf.generate(input_ids, attention_mask=torch.ones_like(input_ids),
                              do_sample=True, temperature=FLAGS.temperature,
                              top_p=FLAGS.top_p, top_k=0, max_new_tokens=FLAGS.new_tokens,
                              min_new_tokens=FLAGS.new_tokens, pad_token_id=0,
                              eos_token_id=None)
        assert out.shape[1] == prompt_BP.shape[1] + FLAGS.new_tokens
        return out

    return run


def logits_parity(graphdef, params, hf, prompt_BP: np.ndarray) -> float:
    """Max |logit difference| between our forward and the peer's on the prompt."""
    import torch

    ours_BTV = np.asarray(nnx.merge(graphdef, params)(prompt_BP)[0])
    with torch.no_grad():
        theirs_BTV = hf(torch.tensor(prompt_BP, dtype=torch.long)).logits.numpy()
    return float(np.abs(ours_BTV - theirs_BTV).max())


def main(argv):
    del argv
    retained = FLAGS.retain_host_memory and host_memory.retain_freed_memory()
    cfg = model_config(FLAGS.size, FLAGS.dtype)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    hf = to_hf(cfg, params) if FLAGS.peer == "hf" else None
    rng = np.random.default_rng(0)
    results = {"size": FLAGS.size, "new_tokens": FLAGS.new_tokens,
               "prompt_len": FLAGS.prompt_len, "top_p": FLAGS.top_p,
               "temperature": FLAGS.temperature, "peer": FLAGS.peer, "dtype": FLAGS.dtype,
               "retain_host_memory": retained,
               "backend": jax.default_backend(), "machine": platform.processor() or
               platform.machine()}
    prompts = {batch: rng.integers(0, cfg.vocab_size, (batch, FLAGS.prompt_len)).astype(
        np.int32) for batch in map(int, FLAGS.batch_sizes)}
    runs = {("ours", batch): ours(graphdef, params, prompt_BP)
            for batch, prompt_BP in prompts.items()}
    if hf is not None:
        runs.update({("peer", batch): peer(hf, prompt_BP) for batch, prompt_BP in prompts.items()})
    # All of ours, then all of the peer's, in each round: torch's OpenMP workers spin on the
    # cores for a while after each parallel region, which would slow whatever ran right after
    # them (each setting's untimed warm-up call absorbs the spin that ends a round).
    seconds = {key: [] for key in runs}
    for _ in range(FLAGS.rounds):
        for key, run in runs.items():
            seconds[key].append(best_time(run, FLAGS.repeats))
    tok_s = {(side, batch): [batch * FLAGS.new_tokens / t for t in times]
             for (side, batch), times in seconds.items()}
    for batch in prompts:
        results[f"ours_tok_s_b{batch}"] = round(max(tok_s["ours", batch]), 1)
    if "ours_tok_s_b1" in results:
        bandwidth, source = metrics.device_memory_bandwidth()
        weight_bytes = metrics.decode_weight_bytes(cfg)
        results.update(weight_mb_per_step=round(weight_bytes / 1e6, 1),
                       memory_bandwidth_gb_s=round(bandwidth / 1e9, 1),
                       memory_bandwidth_source=source,
                       b1_weight_bandwidth_fraction=round(
                           weight_bytes * results["ours_tok_s_b1"] / bandwidth, 3))
    if hf is not None:
        import torch
        results["torch_threads"] = torch.get_num_threads()
        for batch in prompts:
            results[f"peer_tok_s_b{batch}"] = round(max(tok_s["peer", batch]), 1)
            results[f"ratio_b{batch}"] = round(
                results[f"ours_tok_s_b{batch}"] / results[f"peer_tok_s_b{batch}"], 2)
            results[f"ratio_rounds_b{batch}"] = [
                round(ours_b / peer_b, 2) for ours_b, peer_b in
                zip(tok_s["ours", batch], tok_s["peer", batch], strict=True)]
        probe_BP = rng.integers(0, cfg.vocab_size, (2, FLAGS.prompt_len)).astype(np.int32)
        results["max_logit_diff"] = logits_parity(graphdef, params, hf, probe_BP)
    print(f"{'batch':>5} {'ours tok/s':>12} {'peer tok/s':>12} {'ratio':>7}  per round")
    for batch in prompts:
        line = f"{batch:>5} {results[f'ours_tok_s_b{batch}']:>12.1f}"
        if hf is not None:
            line += (f" {results[f'peer_tok_s_b{batch}']:>12.1f}"
                     f" {results[f'ratio_b{batch}']:>7.2f}  {results[f'ratio_rounds_b{batch}']}")
        print(line)
    print(json.dumps(results))


if __name__ == "__main__":
    app.run(main)
