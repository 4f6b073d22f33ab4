"""FLOP and byte counts the benchmarks report, and the datasheet lookups behind them."""

import dataclasses

from configs.models import SIZES
from llm import metrics
from llm.model import ModelConfig


def test_decode_weight_bytes_count_every_matmul_weight_once_in_the_param_dtype():
    cfg = ModelConfig(**SIZES["small"])
    D, F, L, V = cfg.d_model, cfg.d_ff, cfg.n_layers, cfg.vocab_size
    per_layer = D * cfg.n_heads * cfg.head_dim * 2 + D * cfg.n_kv_heads * cfg.head_dim * 2
    per_layer += 3 * D * F
    assert metrics.decode_weight_bytes(cfg) == 4 * (L * per_layer + D * V)
    bf16 = dataclasses.replace(cfg, param_dtype="bfloat16")
    assert metrics.decode_weight_bytes(bf16) * 2 == metrics.decode_weight_bytes(cfg)


def test_memory_bandwidth_is_measured_on_cpu_and_datasheets_match_longest_name_first():
    bandwidth, source = metrics.device_memory_bandwidth()
    assert source.startswith("measured") and 1e9 < bandwidth < 1e13
    names = list(metrics.PEAK_BANDWIDTH)
    assert names.index("h100 pcie") < names.index("h100")
