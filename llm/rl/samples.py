"""Rollout samples on disk: `workdir/rollouts/<step>.jsonl`, one row per completion."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Sequence

import numpy as np


def write_samples(workdir: str | os.PathLike, step: int, prompts: Sequence[str],
                  completions: Sequence[str], reward_names: Sequence[str],
                  per_func_RF: np.ndarray, advantages_R: np.ndarray,
                  finish_reason: Sequence[str]) -> pathlib.Path:
    """Write one rollout batch's samples (prompt, completion, reward per function,
    advantage, finish reason) atomically; returns the file."""
    out = pathlib.Path(workdir) / "rollouts"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{step}.jsonl"
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w") as f:
        for r, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
            row = {"step": step, "prompt": prompt, "completion": completion,
                   "rewards": {n: float(per_func_RF[r, i]) for i, n in enumerate(reward_names)},
                   "advantage": float(advantages_R[r]), "finish_reason": finish_reason[r]}
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)  # a rerun of the same step rewrites the same rows
    return path
