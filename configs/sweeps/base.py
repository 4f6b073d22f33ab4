"""The sweep section every sweep file is built from: a base training config, overrides, seeds.

A sweep's runs are every combination of one entry of `runs` (explicit override sets) with one
value per `grid` key, times each seed; `fixed` overrides apply to all of them. Keys are the
base config's dotted keys (`optim.lr`, `model.d_model`), checked before any run starts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


def sweep_config(base: str, *, grid: Mapping[str, Sequence[Any]] | None = None,
                 runs: Sequence[Mapping[str, Any]] | None = None,
                 fixed: Mapping[str, Any] | None = None,
                 seeds: Sequence[int] = (0,)) -> ml_collections.ConfigDict:
    """A sweep over `base` (`configs/<task>.py[:args]`); dotted keys stay plain dicts/pairs."""
    return ml_collections.ConfigDict(dict(
        base=base,
        # ConfigDict refuses dotted field names, so the override sets are kept as pairs.
        grid=tuple((key, tuple(values)) for key, values in (grid or {}).items()),
        runs=[dict(run) for run in (runs or [{}])],
        fixed=tuple((fixed or {}).items()),
        seeds=tuple(int(s) for s in seeds),
        folder="",  # every run's workdir is FOLDER/<run name>; results land in FOLDER
        executor="local",  # local | slurm
        parallel=1,  # local executor: runs at once (0 = all)
        retry_failed=False,  # a rerun retries failed runs too (finished ones never rerun)
        # "" = the base config's data.path as is; "demo" = the standard library's sources,
        # prepared once into FOLDER/data and shared by every run.
        shared_data="",
        demo_files=120,
        metric="eval_loss",  # the table's and plots' headline metric
        # sbatch flags for the array job; max_parallel caps its running tasks (0 = no cap)
        slurm=dict(sbatch_args="--nodes=1", max_parallel=0),
    ))
