"""Benchmark: multiple-choice log-likelihood requests per second, ours against lm-eval's
Hugging Face backend on the same weights, in the same run.

  python scripts/bench_eval.py [--model=small] [--questions=64] [--batch_size=32]

Workload (fixed seed): `questions` contexts of 64-256 random tokens, 4 choices each of 1-8
tokens, scored in batches of 32 requests. Ours is `llm.eval.loglik.Scorer` (each context
prefilled once into a KV cache, its choices scored against copies of it); the peer is
`lm_eval.models.huggingface.HFLM._loglikelihood_tokens` on the fp32 export of the same
random weights (`llm/hf/convert.py`), given the same token ids. Both run on the CPU. Ours is
timed cold (compilation included) and warm; the compile time is their difference. The two
agree request by request (max |Δ| printed). Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import tempfile
import time

from absl import app, flags

MODEL = flags.DEFINE_string("model", "small", "Model size from configs/models.py.")
QUESTIONS = flags.DEFINE_integer("questions", 64, "Questions (4 choices each).")
BATCH = flags.DEFINE_integer("batch_size", 32, "Requests per batch, ours and the peer's.")
SEED = flags.DEFINE_integer("seed", 0, "Workload seed.")


def workload(vocab: int, questions: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """(context ids, continuation ids): 4 choices per context, contexts 64-256 tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(questions):
        context = [2, *rng.integers(4, vocab, int(rng.integers(63, 256))).tolist()]
        for _ in range(4):
            pairs.append((context, rng.integers(4, vocab, int(rng.integers(1, 9))).tolist()))
    return pairs


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main(argv: list[str]) -> None:
    """Measure both and print the table and the JSON line."""
    del argv
    import jax
    import numpy as np
    import torch
    from flax import nnx
    from lm_eval.models.huggingface import HFLM

    from configs.models import model_config
    from llm import metrics
    from llm.eval.loglik import Scorer
    from llm.hf import peer as peer_lib
    from llm.model import ModelConfig, Transformer

    cfg = ModelConfig.from_dict({k: v for k, v in model_config(MODEL.value).items()
                                 if k != "size"})
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(SEED.value)))
    pairs = workload(cfg.vocab_size, QUESTIONS.value, SEED.value)
    n = len(pairs)
    peak = metrics.measure_peak()

    scorer = Scorer(graphdef, params, batch_size=BATCH.value)
    cold, cold_s = timed(lambda: scorer.loglikelihood(pairs))
    warm, warm_s = timed(lambda: scorer.loglikelihood(pairs))

    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = os.path.join(tmp, "hf")
        peer_lib.export_for_peer(cfg, params, hf_dir, pad=0, unk=1, bos=2, eos=3)
        peer = HFLM(pretrained=hf_dir, dtype="float32", batch_size=BATCH.value, device="cpu")
        requests = [(("", ""), c, k) for c, k in pairs]
        with torch.no_grad():
            theirs, peer_s = timed(lambda: peer._loglikelihood_tokens(requests,
                                                                      disable_tqdm=True))
    delta = float(np.max(np.abs(np.array([a for a, _ in warm]) -
                                np.array([a for a, _ in theirs]))))
    same_cold = float(np.max(np.abs(np.array([a for a, _ in cold]) -
                                    np.array([a for a, _ in warm]))))
    ours_rps, cold_rps, peer_rps = n / warm_s, n / cold_s, n / peer_s
    print(f"model {MODEL.value}: {n} requests ({QUESTIONS.value} questions x 4 choices), "
          f"batch {BATCH.value}, {jax.devices()[0].device_kind}, torch threads "
          f"{torch.get_num_threads()}, XLA fp32 matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'':28s}{'req/s':>10s}{'seconds':>10s}")
    print(f"{'ours (warm)':28s}{ours_rps:10.1f}{warm_s:10.2f}")
    print(f"{'ours (cold, with compile)':28s}{cold_rps:10.1f}{cold_s:10.2f}")
    print(f"{'lm-eval HF backend':28s}{peer_rps:10.1f}{peer_s:10.2f}")
    print(f"compile {cold_s - warm_s:.2f} s; max |Δ log-likelihood| vs peer {delta:.2e} "
          f"(cold vs warm {same_cold:.1e})")
    print(json.dumps({"model": MODEL.value, "requests": n, "batch_size": BATCH.value,
                      "ours_req_per_s": round(ours_rps, 2),
                      "ours_cold_req_per_s": round(cold_rps, 2),
                      "compile_s": round(cold_s - warm_s, 2),
                      "peer_req_per_s": round(peer_rps, 2),
                      "ratio": round(ours_rps / peer_rps, 2),
                      "ratio_cold": round(cold_rps / peer_rps, 2),
                      "max_abs_delta": delta, "matmul_peak_gflops": round(peak / 1e9, 1)}))


if __name__ == "__main__":
    app.run(main)
