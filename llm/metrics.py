"""FLOPs and MFU, metric writers (metrics.jsonl, tensorboardX, wandb) and console progress.

FLOPs per trained token = 6 * N + 6 * L * T * H * E, where N counts the parameters of every
matmul (all projection kernels and the LM head, not the input-embedding lookup) and the
second term is attention's QK^T and AV matmuls (2 * 2 * T * H * E per layer forward, times 3
for forward + backward) counted at half because the mask is causal.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
import sys
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from llm.model import ModelConfig

# Datasheet figures per device, keyed by a substring of `device.device_kind` (lowercase),
# tried in order, so a longer name comes before any name it contains ("tpu v5 lite" is
# v5e, plain "tpu v5" is v5p). None: no figure for that device, measure instead.
# Dense bf16 peaks (FLOP/s); CPU peaks are measured (`measure_peak`).
PEAK_FLOPS = {"h100 pcie": 756e12, "h100": 989e12, "h200": 989e12, "a100": 312e12,
              "v4 lite": None, "v4": 275e12, "v5 lite": 197e12, "v5e": 197e12,
              "v5p": 459e12, "v5": 459e12, "v6 lite": 918e12, "v6e": 918e12}
# Memory bandwidth (bytes/s); CPU bandwidth is measured (`measure_bandwidth`).
PEAK_BANDWIDTH = {"h100 pcie": 2.0e12, "h100": 3.35e12, "h200": 4.8e12,
                  "a100-sxm4-40gb": 1.555e12, "a100-pcie-40gb": 1.555e12, "a100": 2.04e12,
                  "v4 lite": None, "v4": 1.2e12, "v5 lite": 0.819e12, "v5e": 0.819e12,
                  "v5p": 2.765e12, "v5": 2.765e12, "v6 lite": 1.64e12, "v6e": 1.64e12}


def datasheet(table: dict[str, float | None], device_kind: str) -> float | None:
    """The table's figure for a device kind (first key it contains), or None."""
    kind = device_kind.lower()
    return next((value for name, value in table.items() if name in kind), None)


def matmul_params(cfg: ModelConfig) -> int:
    """Parameters that take part in a matmul per token (LM head included, embedding not)."""
    D, H, K, E, F, L = (cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff,
                        cfg.n_layers)
    attn = D * H * E * 2 + D * K * E * 2
    mlp = D * F * (3 if cfg.family == "llama" else 2)
    return L * (attn + mlp) + D * cfg.vocab_size


def train_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward), causal attention counted as half."""
    attention = 6 * cfg.n_layers * seq_len * cfg.n_heads * cfg.head_dim
    return 6.0 * matmul_params(cfg) + attention


# Host measurements (matmul peak, memory bandwidth), taken once per process.
_measured: dict[str, float] = {}


def measure_peak(size: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large jitted float32 matmul on device 0 (the CPU 'peak' for MFU)."""
    if "peak" in _measured:
        return _measured["peak"]
    seconds = _best_seconds(jax.jit(lambda x: x @ x), jnp.ones((size, size), jnp.float32),
                            repeats)
    _measured["peak"] = 2 * size**3 / seconds
    return _measured["peak"]


def _best_seconds(f: Any, x: jax.Array, repeats: int) -> float:
    """Fastest of `repeats` timed calls of jitted f(x), after one compiling call."""
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def device_peak_flops() -> tuple[float, str]:
    """(peak FLOP/s for all local devices, how it was obtained)."""
    kind = jax.devices()[0].device_kind
    peak = datasheet(PEAK_FLOPS, kind)
    if peak is not None:
        return peak * jax.device_count(), f"{kind} datasheet bf16 peak"
    return measure_peak(), "measured jitted fp32 matmul on this host"


def measure_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes/s of a jitted sum over a float32 array far larger than any cache (device 0)."""
    if "bandwidth" in _measured:
        return _measured["bandwidth"]
    x = jnp.ones((megabytes * 2**20 // 4,), jnp.float32)
    _measured["bandwidth"] = x.nbytes / _best_seconds(jax.jit(jnp.sum), x, repeats)
    return _measured["bandwidth"]


def device_memory_bandwidth() -> tuple[float, str]:
    """(memory bandwidth of one device in bytes/s, how it was obtained)."""
    kind = jax.devices()[0].device_kind
    bandwidth = datasheet(PEAK_BANDWIDTH, kind)
    if bandwidth is not None:
        return bandwidth, f"{kind} datasheet memory bandwidth"
    return measure_bandwidth(), "measured jitted sum of 256 MiB on this host"


def decode_weight_bytes(cfg: ModelConfig) -> int:
    """Bytes of weights one decode step must stream: every matmul weight incl. the LM head
    (the input embedding is a gather of B rows), in the parameter dtype."""
    return matmul_params(cfg) * jnp.dtype(cfg.param_dtype).itemsize


def _read_records(path: pathlib.Path) -> list[bytes]:
    """TFRecord framing: u64 length, u32 crc, data, u32 crc."""
    records, data = [], path.read_bytes()
    offset = 0
    while offset + 12 <= len(data):
        (length,) = struct.unpack("<Q", data[offset: offset + 8])
        start = offset + 12
        if start + length + 4 > len(data):
            break  # a torn last record from a killed run
        records.append(data[start: start + length])
        offset = start + length + 4
    return records


def truncate_tensorboard(tb_dir: pathlib.Path, last_step: int) -> None:
    """Rewrite event files so they keep no step after `last_step` (resume == uninterrupted)."""
    from tensorboardX.event_file_writer import EventFileWriter
    from tensorboardX.proto import event_pb2

    files = sorted(tb_dir.glob("events.out.tfevents.*"))
    if not files:
        return
    kept = []
    for file in files:
        for raw in _read_records(file):
            event = event_pb2.Event.FromString(raw)
            if event.HasField("summary") and event.step > last_step:
                continue
            if event.HasField("summary"):
                kept.append(event)
    staging = tb_dir / "_rewrite"
    staging.mkdir(exist_ok=True)
    writer = EventFileWriter(str(staging))
    for event in kept:
        writer.add_event(event)
    writer.close()
    for file in files:
        file.unlink()
    for file in staging.iterdir():  # a distinct name: the next writer may reuse the second
        file.rename(tb_dir / f"{file.name}.resumed")
    staging.rmdir()


class MetricsWriter:
    """Writes each logged step to metrics.jsonl, tensorboardX and (optionally) wandb."""

    def __init__(self, workdir: str | os.PathLike, resume_step: int | None,
                 wandb_config: Mapping[str, Any] | None = None, is_primary: bool = True,
                 run_config: Mapping[str, Any] | None = None):
        self.is_primary = is_primary
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.tb_dir = pathlib.Path(workdir) / "tb"
        self._tb = self._wandb = None
        if not is_primary:
            return
        self._truncate(resume_step or 0)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(self.tb_dir), flush_secs=10)
        if wandb_config and wandb_config.get("wandb"):
            import wandb

            self._wandb = wandb.init(project=wandb_config.get("wandb_project", "llm"),
                                     dir=str(workdir), mode=wandb_config.get("wandb_mode"),
                                     config=dict(run_config or {}), resume="allow")

    def _truncate(self, last_step: int) -> None:
        if self.path.exists():
            lines = [line for line in self.path.read_text().splitlines() if line.strip()]
            kept = []
            for line in lines:
                try:
                    if json.loads(line)["step"] <= last_step:
                        kept.append(line)
                except (json.JSONDecodeError, KeyError):
                    break  # a torn line from a killed run; nothing after it is trusted
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)
        if self.tb_dir.exists():
            truncate_tensorboard(self.tb_dir, last_step)

    def write(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's scalars (numbers only; strings go to jsonl alone); nothing for
        an empty `metrics` (a row is never just its step)."""
        if not self.is_primary or not metrics:
            return
        record = {"step": int(step)}
        for key, value in metrics.items():
            if isinstance(value, str):
                record[key] = value
            else:
                record[key] = float(np.asarray(value))
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        for key, value in record.items():
            if key != "step" and not isinstance(value, str):
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)

    def close(self) -> None:
        """Flush and close every sink."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def format_eta(seconds: float) -> str:
    """Human ETA like 1h02m or 3m05s."""
    seconds = max(int(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def print_progress(step: int, total: int, metrics: Mapping[str, Any], eta_s: float) -> None:
    """One console line per logged step."""
    parts = [f"step {step}/{total}"]
    for key, fmt in (("loss", "{:.4f}"), ("eval_loss", "{:.4f}"), ("reward", "{:.3f}"),
                     ("accuracy", "{:.3f}"), ("lr", "{:.2e}"),
                     ("grad_norm", "{:.3f}"), ("tokens_per_s", "{:,.0f} tok/s"),
                     ("mfu", "{:.1%} MFU")):
        if key in metrics:
            label = "" if key in ("tokens_per_s", "mfu") else f"{key} "
            parts.append(label + fmt.format(float(metrics[key])))
    parts.append(f"ETA {format_eta(eta_s)}")
    print(" | ".join(parts), file=sys.stdout, flush=True)
