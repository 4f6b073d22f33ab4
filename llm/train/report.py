"""Reading each step's metrics a step late, logging them, and when periodic work is due."""

from __future__ import annotations

import math
import time
from typing import Any

import jax

from llm import metrics as metrics_lib
from llm.train.workdir import TrainingError


def due(step: int, every: int, total: int) -> bool:
    """Whether work run every `every` steps (0 = never) falls at `step` (the last one too)."""
    return every > 0 and (step % every == 0 or step == total)


class StepReporter:
    """Holds the step in flight; reading it (blocking) checks it, times it and logs it.

    The loop dispatches step N+1 before reading step N, so the device never waits on the
    host; `flush` reads the held step at once (before a checkpoint, an evaluation, or
    whenever the task's state must see every step before its next `prepare`).
    """

    def __init__(self, writer: metrics_lib.MetricsWriter, log_every: int, total_steps: int,
                 first_step: int, observe: Any = None):
        self.writer, self.log_every, self.total_steps = writer, log_every, total_steps
        self.first_step = first_step
        self.observe = observe  # the task's hook for each step's metrics, or None
        self.peak_flops, _ = metrics_lib.device_peak_flops()
        self.final: dict[str, Any] = {}
        self._pending: tuple | None = None
        self._last_read = time.perf_counter()

    def submit(self, step: int, device_metrics: dict, digest: str, tokens: float,
               flops: float) -> None:
        """Hold step `step`'s metrics; read the previously held step now."""
        self.flush()
        self._pending = (step, device_metrics, digest, tokens, flops)

    def flush(self) -> None:
        """Read the held step, if any: stop on non-finite, log every `log_every` steps."""
        if self._pending is None:
            return
        step, device_metrics, digest, tokens, flops = self._pending
        self._pending = None
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        now = time.perf_counter()
        if not values.pop("finite"):
            raise TrainingError(
                f"step {step}: non-finite loss ({values['loss']}) or gradient norm "
                f"({values['grad_norm']}); the update was not applied and no checkpoint was "
                "written after the last good one. Lower optim.lr or check the data.")
        values.pop("weight", None)
        if values.get("empty_batch"):  # stays in the row: 1 marks a skipped update
            print(f"warning: step {step}: no target tokens in the whole batch (every row's "
                  "loss mask is zero); the update was skipped. Check the data's targets "
                  "(e.g. SFT rows without an assistant turn, or prompts longer than seq_len)",
                  flush=True)
        elapsed = max(now - self._last_read, 1e-9)
        self._last_read = now
        values["tokens"] = tokens
        values["flops"] = flops  # the task's count for this update (sweeps sum it)
        values["tokens_per_s"] = tokens / elapsed
        values["mfu"] = flops / elapsed / self.peak_flops
        values["step_time_s"] = elapsed
        if "nll" in values:
            values["perplexity"] = math.exp(min(values["nll"], 50.0))
        self.final.update(values)
        if self.observe is not None:
            self.observe(step, values)
        if (step % self.log_every == 0 or step == self.total_steps
                or step == self.first_step + 1):
            self.writer.write(step, {**values, "batch_hash": digest})
            metrics_lib.print_progress(step, self.total_steps, values,
                                       (self.total_steps - step) * elapsed)
