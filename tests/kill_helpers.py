"""Killing a training subprocess at a known point, for the kill -9 / rerun tests."""

from __future__ import annotations

import signal
import subprocess
import time


def sigkill_after_step(proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    """Read the run's progress lines until `step` is logged (or its output ends), then
    SIGKILL it and reap it."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        line = proc.stdout.readline()
        if line.startswith(f"step {step}/") or not line:
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
