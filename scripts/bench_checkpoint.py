"""Checkpoint save and restore with and without the checksum manifest (interleaved A/B).

python scripts/bench_checkpoint.py [--model=small] [--rounds=7]

Saves the train state a run of `--model` checkpoints (parameters + AdamW moments, fp32)
synchronously and restores it, alternating a checkpointer that writes and verifies the
manifest (ours) with one that does neither (plain orbax), in one process, to fresh
directories each round. Prints the median seconds of each, their ratio, and the hashing
rate; the last line is one JSON object with the figures.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import statistics
import tempfile
import time

from absl import app, flags
from orbax.checkpoint._src.path import atomicity

_MODEL = flags.DEFINE_string("model", "small", "size from configs/models.py")
_ROUNDS = flags.DEFINE_integer("rounds", 7, "A/B alternations", lower_bound=1)
_DIR = flags.DEFINE_string("dir", "", "where to write (default: a temporary directory)")


def train_state(size: str):
    """The {params, opt_state} a run of `size` checkpoints, on one device."""
    import jax
    import optax
    from flax import nnx

    from configs import models
    from llm.model import ModelConfig, Transformer

    cfg = ModelConfig(**{k: v for k, v in models.model_config(size).items() if k != "size"})
    params = nnx.state(Transformer(cfg, nnx.Rngs(0)), nnx.Param)
    params = jax.tree.map(lambda x: x, params)
    return {"params": params, "opt_state": optax.adamw(1e-3).init(params)}


def checkpointers():
    """(ours, plain): the same Checkpointer with and without the manifest."""
    from llm.checkpoint import Checkpointer

    class Plain(Checkpointer):
        temporary_path_class = atomicity.AtomicRenameTemporaryPath

        def verify(self, step: int) -> None:
            return None

    return Checkpointer, Plain


def one_round(cls, root: pathlib.Path, state, shardings) -> dict[str, float]:
    """Wall and CPU seconds (all threads) of saving and restoring one fresh checkpoint."""
    import jax

    checkpointer = cls(root, keep=2, async_save=False)
    out = {}
    wall, cpu = time.perf_counter(), time.process_time()
    checkpointer.save(1, state, None, {"tokens_seen": 0}, {"task": "bench"})
    checkpointer.wait()
    out["save"], out["save_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    wall, cpu = time.perf_counter(), time.process_time()
    restored, _, _ = checkpointer.restore(1, state, shardings, None)
    jax.block_until_ready(restored)
    out["restore"], out["restore_cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    checkpointer.close()
    return out


def main(argv: list[str]) -> None:
    """Time the A/B and print the table and the JSON line."""
    del argv
    import jax

    from llm.data import checksums

    state = train_state(_MODEL.value)
    shardings = jax.tree.map(lambda x: x.sharding, state)
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    base = pathlib.Path(_DIR.value or tempfile.mkdtemp(prefix="bench_ckpt_"))
    ours_cls, plain_cls = checkpointers()
    kinds = ("save", "save_cpu", "restore", "restore_cpu")
    times = {name: {k: [] for k in kinds} for name in ("ours", "plain")}
    hash_rates = []
    one_round(ours_cls, base / "warmup", state, shardings)  # first-call costs, untimed
    for r in range(_ROUNDS.value):
        order = [("ours", ours_cls), ("plain", plain_cls)]
        for name, cls in order if r % 2 == 0 else order[::-1]:
            root = base / f"{name}_{r}"
            for kind, value in one_round(cls, root, state, shardings).items():
                times[name][kind].append(value)
            if name == "ours":
                start = time.perf_counter()
                hashed = checksums.write_manifest(root / "1")
                hash_rates.append(hashed / (time.perf_counter() - start) / 1e9)
            shutil.rmtree(root)
    shutil.rmtree(base / "warmup", ignore_errors=True)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    ratio = {k: round(med["ours"][k] / med["plain"][k], 3) for k in kinds}
    print(f"model {_MODEL.value}: {nbytes / 1e6:.1f} MB of state, {_ROUNDS.value} rounds, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"{'median':14}{'ours (manifest)':>18}{'plain orbax':>14}{'ratio':>8}")
    for kind in kinds:
        print(f"{kind + ' s':14}{med['ours'][kind]:>18.3f}{med['plain'][kind]:>14.3f}"
              f"{ratio[kind]:>8.3f}")
    rate = statistics.median(hash_rates)
    print(f"hashing (xxh3-128, page cache warm): {rate:.2f} GB/s")
    print(json.dumps({
        "model": _MODEL.value, "state_mb": round(nbytes / 1e6, 1), "rounds": _ROUNDS.value,
        "ours_s": {k: round(v, 4) for k, v in med["ours"].items()},
        "plain_s": {k: round(v, 4) for k, v in med["plain"].items()},
        "ratio": ratio, "hash_gb_per_s": round(rate, 2),
        "load_average": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    app.run(main)
