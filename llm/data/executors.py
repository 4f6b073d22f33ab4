"""Where preparation stages run: inline, a local process pool, or a Ray cluster.

A stage is a module-level function applied to a list of argument tuples (one per shard);
the executor returns the results in the same order, so every executor gives the same
output. Ray is an existing engine: `ray.init()` joins a running cluster (RAY_ADDRESS) or
starts a local one; we never schedule machines ourselves.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence

from llm.data import DataError

EXECUTORS = ("local", "ray")


def run_stage(fn: Callable, args: Sequence[tuple], executor: str, num_workers: int) -> list:
    """[fn(*a) for a in args], run by `executor` ('local' pool or 'ray')."""
    if executor not in EXECUTORS:
        raise DataError(f"unknown executor {executor!r}; expected one of {EXECUTORS}")
    if executor == "ray":
        try:
            import ray
        except ImportError as e:
            raise DataError("executor 'ray' needs `pip install ray` (the data extra)") from e
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     num_cpus=num_workers if num_workers > 0 else None)
        remote = ray.remote(fn)
        return ray.get([remote.remote(*a) for a in args])
    if num_workers <= 1 or len(args) <= 1:
        return [fn(*a) for a in args]
    # spawn, not fork: the caller may be a training script with JAX threads running.
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(min(num_workers, len(args)),
                                                mp_context=ctx) as pool:
        return list(pool.map(fn, *zip(*args, strict=True)))
