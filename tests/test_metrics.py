"""FLOP and byte counts the benchmarks report, the datasheet lookups behind them, and the
console progress line."""

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


def test_cpu_figures_are_measured_and_datasheets_match_jax_device_kinds():
    bandwidth, source = metrics.device_memory_bandwidth()
    assert source.startswith("measured") and 1e9 < bandwidth < 1e13
    # device_kind strings as JAX reports them
    for kind, flops, bandwidth in [
        ("NVIDIA H100 80GB HBM3", 989e12, 3.35e12), ("NVIDIA H100 PCIe", 756e12, 2.0e12),
        ("NVIDIA H200", 989e12, 4.8e12), ("NVIDIA A100-SXM4-40GB", 312e12, 1.555e12),
        ("TPU v4", 275e12, 1.2e12), ("TPU v4 lite", None, None),
        ("TPU v5 lite", 197e12, 0.819e12), ("TPU v5", 459e12, 2.765e12),
        ("TPU v5p", 459e12, 2.765e12), ("TPU v6 lite", 918e12, 1.64e12), ("cpu", None, None)]:
        assert metrics.datasheet(metrics.PEAK_FLOPS, kind) == flops, kind
        assert metrics.datasheet(metrics.PEAK_BANDWIDTH, kind) == bandwidth, kind


def test_progress_line_shows_rl_reward_and_accuracy_when_logged(capsys):
    metrics.print_progress(5, 800, {"loss": 0.03, "reward": 0.25, "accuracy": 0.25,
                                        "lr": 1e-4}, eta_s=65)
    line = capsys.readouterr().out
    assert line.startswith("step 5/800 | loss 0.0300 | reward 0.250 | accuracy 0.250 |")
    assert "ETA 1m05s" in line
    metrics.print_progress(5, 800, {"loss": 0.5}, eta_s=1)
    assert "reward" not in capsys.readouterr().out
