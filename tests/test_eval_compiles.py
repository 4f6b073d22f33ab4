"""The fixed multiple-choice benchmark workload compiles one prefill and one scoring program
per context-count bucket (a regression that pads per batch again fails here)."""

import os
import sys

import jax
import pytest
from flax import nnx

from llm.eval import loglik
from llm.model import ModelConfig, Transformer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
from bench_eval import workload  # noqa: E402


@pytest.mark.slow
def test_fixed_workload_compiles_one_program_per_bucket():
    cfg = ModelConfig.from_dict(dict(vocab_size=512, d_model=32, n_layers=2, n_heads=2,
                                     n_kv_heads=1, head_dim=16, d_ff=64, max_seq_len=512))
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    pairs = workload(cfg.vocab_size, 16, 0)  # 4 choices, contexts of 64-256 tokens
    names: list[str] = []

    def listen(event: str, seconds: float, **kwargs) -> None:
        if "backend_compile" in event:
            names.append(kwargs.get("fun_name", ""))

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        scorer = loglik.Scorer(graphdef, params, batch_size=32)
        first = scorer.loglikelihood(pairs)
        second = scorer.loglikelihood(pairs[::-1])
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
    # every batch holds 8 contexts (32 rows / 4 choices): one C bucket, one P, one T, and
    # one prefill chunk length whatever the chunk's offset
    assert names.count("jit(_prefill)") == 1, names
    assert names.count("jit(_score)") == 1, names
    assert [ll for ll, _ in second[::-1]] == [ll for ll, _ in first]
