"""Benchmark: import time and transient host memory of `llm.hf.convert.import_hf` on the 1b config.

  python scripts/bench_hf.py [--dir=/tmp/bench_hf_1b] [--dtypes=bfloat16,float32] [--peer]
      [--model=1b]  # another size needs its own --dir

Writes random 1b weights in bfloat16 with our own export (once; reused when present), then
imports them in a fresh process per dtype. Transient memory = peak RSS during the import minus
the RSS before it minus the bytes of the final arrays; streaming keeps it to about one read
chunk. The peer (`--peer`) is transformers' `from_pretrained` on the same directory, measured
the same way. Last line: one JSON object.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Any

from absl import app, flags

from configs.models import SIZES

MODEL = flags.DEFINE_enum("model", "1b", list(SIZES),
                          "configs/models.py size to export and import (tiny: a quick check).")
DIR = flags.DEFINE_string("dir", "/tmp/bench_hf_1b", "Where the exported checkpoint lives.")
DTYPES = flags.DEFINE_list("dtypes", ["bfloat16", "float32"], "Import dtypes to measure.")
PEER = flags.DEFINE_bool("peer", True, "Also measure transformers' from_pretrained.")
PHASE = flags.DEFINE_enum("phase", "main", ["main", "export", "import", "peer"],
                          "Internal: which subprocess this is.")
DTYPE = flags.DEFINE_string("dtype", "bfloat16", "Internal: dtype of one import run.")

GIB = 1024**3


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM (Linux >= 4.0)
        f.write("5")


def _peak_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _largest_tensor_bytes(path: str) -> tuple[str, int]:
    from safetensors import safe_open
    best = ("", 0)
    for file in sorted(f for f in os.listdir(path) if f.endswith(".safetensors")):
        with safe_open(os.path.join(path, file), "np") as f:
            for name in f.keys():
                s = f.get_slice(name)
                size = 1
                for n in s.get_shape():
                    size *= n
                size *= {"BF16": 2, "F16": 2, "F32": 4}[s.get_dtype()]
                best = max(best, (name, size), key=lambda x: x[1])
    return best


def run_export(path: str) -> dict[str, Any]:
    """Random `--model` weights in bfloat16 through our export (skipped when written)."""
    import jax
    from flax import nnx

    from llm import sharding
    from llm.hf import convert as hf
    from llm.model import ModelConfig, Transformer
    cfg = ModelConfig(**SIZES[MODEL.value], param_dtype="bfloat16", dtype="bfloat16")
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    _, params = sharding.init_sharded(lambda: Transformer(cfg, nnx.Rngs(0)), mesh)
    start = time.perf_counter()
    hf.export_hf(cfg, params, path, dtype="bfloat16")
    return {"export_s": time.perf_counter() - start}


def run_import(path: str, dtype: str) -> dict[str, Any]:
    """Time import_hf and measure its transient host memory in this (fresh) process."""
    import jax
    import jax.numpy as jnp

    from llm.hf import convert as hf
    jnp.zeros(1).block_until_ready()  # backend up before the baseline
    before = _rss_bytes()
    _reset_peak()
    start = time.perf_counter()
    _, _, params, _ = hf.import_hf(path, dtype=dtype)
    jax.block_until_ready(params)
    seconds = time.perf_counter() - start
    final = sum(x.nbytes for x in jax.tree.leaves(params))
    peak = _peak_bytes()
    return {"seconds": seconds, "final_bytes": final, "peak_minus_before": peak - before,
            "transient_bytes": peak - before - final}


def run_peer(path: str) -> dict[str, Any]:
    """The same measurement for transformers' from_pretrained in bfloat16."""
    import torch
    import transformers
    torch.zeros(1)
    before = _rss_bytes()
    _reset_peak()
    start = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    for p in model.parameters():  # page in weights that are still lazily memory-mapped
        torch.count_nonzero(p)
    seconds = time.perf_counter() - start
    final = sum(p.numel() * p.element_size() for p in model.parameters())
    peak = _peak_bytes()
    return {"seconds": seconds, "final_bytes": final, "peak_minus_before": peak - before,
            "transient_bytes": peak - before - final}


def _subprocess(phase: str, **extra: str) -> dict[str, Any]:
    args = [sys.executable, os.path.abspath(__file__), f"--phase={phase}", f"--dir={DIR.value}",
            f"--model={MODEL.value}"]
    args += [f"--{k}={v}" for k, v in extra.items()]
    out = subprocess.run(args, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str]) -> None:
    del argv
    if PHASE.value != "main":
        result = {"export": lambda: run_export(DIR.value),
                  "import": lambda: run_import(DIR.value, DTYPE.value),
                  "peer": lambda: run_peer(DIR.value)}[PHASE.value]()
        print(json.dumps(result))
        return
    if not os.path.isfile(os.path.join(DIR.value, "config.json")):
        print(f"exporting random {MODEL.value} weights to {DIR.value} ...", flush=True)
        print(f"  export took {_subprocess('export')['export_s']:.1f}s", flush=True)
    name, largest = _largest_tensor_bytes(DIR.value)
    rows = {f"ours_{d}": _subprocess("import", dtype=d) for d in DTYPES.value}
    if PEER.value:
        rows["transformers_bfloat16"] = _subprocess("peer")
    print(f"largest tensor in the file: {name} {largest / GIB:.3f} GiB")
    print(f"{'run':24s} {'seconds':>8s} {'final GiB':>10s} {'transient GiB':>14s} "
          f"{'transient/largest':>18s}")
    for key, r in rows.items():
        r["transient_over_largest"] = r["transient_bytes"] / largest
        print(f"{key:24s} {r['seconds']:8.2f} {r['final_bytes'] / GIB:10.3f} "
              f"{r['transient_bytes'] / GIB:14.3f} {r['transient_over_largest']:18.2f}")
    summary: dict[str, Any] = {"model": MODEL.value, "largest_tensor": name,
                               "largest_tensor_bytes": largest, **rows}
    if PEER.value and "ours_bfloat16" in rows:
        ours, peer = rows["ours_bfloat16"], rows["transformers_bfloat16"]
        summary["time_ratio_ours_over_peer"] = ours["seconds"] / peer["seconds"]
    print(json.dumps(summary))


if __name__ == "__main__":
    app.run(main)
