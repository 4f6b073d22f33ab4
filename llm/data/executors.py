"""Where preparation stages run: inline, a local process pool, or a Ray cluster.

A stage is a module-level function applied to a list of argument tuples (one per shard);
the executor returns the results in the same order, so every executor gives the same
output. One `Executor` serves every stage of a run, so the local pool's worker processes
start (and import numpy, the tokenizer and the compiled dedup kernels) once, not once per
stage. Ray is an existing engine: `ray.init()` joins a running cluster (RAY_ADDRESS) or
starts a local one; we never schedule machines ourselves.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
from collections.abc import Callable, Sequence

from llm.data import DataError

EXECUTORS = ("local", "ray")


class Executor:
    """Runs stages as `[fn(*a) for a in args]` on `kind` ('local' pool or 'ray')."""

    def __init__(self, kind: str, num_workers: int):
        if kind not in EXECUTORS:
            raise DataError(f"unknown executor {kind!r}; expected one of {EXECUTORS}")
        self.kind, self.num_workers = kind, num_workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def run(self, fn: Callable, args: Sequence[tuple]) -> list:
        """fn applied to every argument tuple, results in order."""
        if self.kind == "ray":
            return self._run_ray(fn, args)
        if self.num_workers <= 1 or len(args) <= 1:
            return [fn(*a) for a in args]
        if self._pool is None:
            # spawn, not fork: the caller may be a training script with JAX threads running.
            self._pool = concurrent.futures.ProcessPoolExecutor(
                self.num_workers, mp_context=multiprocessing.get_context("spawn"))
        return list(self._pool.map(fn, *zip(*args, strict=True)))

    def _run_ray(self, fn: Callable, args: Sequence[tuple]) -> list:
        try:
            import ray
        except ImportError as e:
            raise DataError("executor 'ray' needs `pip install ray` (the data extra)") from e
        if not ray.is_initialized():
            ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False,
                     num_cpus=self.num_workers if self.num_workers > 0 else None)
        remote = ray.remote(fn)
        return ray.get([remote.remote(*a) for a in args])

    def close(self) -> None:
        """Stop the local pool's workers (Ray stays up for whoever started it)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

