"""A sweep config → its runs: one override set and one workdir each, checked up front."""

from __future__ import annotations

import dataclasses
import itertools
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from llm import config as config_lib

SWEEP_KEYS = ("base", "grid", "runs", "fixed", "seeds", "folder", "executor", "parallel",
              "retry_failed", "shared_data", "demo_files", "metric", "slurm")
EXECUTORS = ("local", "slurm")


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: the overrides that name it and the workdir they get."""

    name: str
    overrides: dict[str, Any]  # the varying ones (run set, grid values, seed), in order
    fixed: dict[str, Any]
    workdir: pathlib.Path

    def flags(self, base: str, extra: Mapping[str, Any] | None = None) -> list[str]:
        """scripts/train.py's flags for this run."""
        values = {**self.fixed, **(extra or {}), **self.overrides}
        return [f"--config={base}", f"--config.workdir={self.workdir}",
                *(f"--config.{key}={format_value(value)}" for key, value in values.items())]

    @property
    def group(self) -> str:
        """The run's name without its seed: the runs that mean ± std pools."""
        return name_of({k: v for k, v in self.overrides.items() if k != "seed"}) or "base"


def format_value(value: Any) -> str:
    """A value as `--config.key=` takes it (booleans lower-case, sequences as literals)."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple | dict):
        return json.dumps(value)
    return str(value)


def name_of(overrides: Mapping[str, Any]) -> str:
    """A folder name from overrides: `d_model=32-total_steps=40-seed=0`.

    Keys are shortened to their last part where that stays unambiguous."""
    leaves = [key.rpartition(".")[2] for key in overrides]
    parts = []
    for key, leaf in zip(overrides, leaves, strict=True):
        label = leaf if leaves.count(leaf) == 1 else key
        parts.append(f"{label}={format_value(overrides[key])}")
    return re.sub(r"[^A-Za-z0-9._=+-]", "_", "-".join(parts))


def _pairs(value: Any, key: str, path: str) -> list[tuple[str, Any]]:
    try:
        return [(str(k), v) for k, v in (value.items() if isinstance(value, Mapping)
                                          else value)]
    except (TypeError, ValueError):
        raise config_lib.ConfigError(f"{path}: {key} must be (key, value) pairs or a dict, "
                                     f"got {value!r}") from None


def check_sweep(sweep: ml_collections.ConfigDict, path: str) -> None:
    """The sweep's own keys: present, of the expected kinds."""
    missing = [k for k in SWEEP_KEYS if k not in sweep]
    if missing:
        raise config_lib.ConfigError(f"{path}: a sweep config needs {', '.join(missing)} "
                                     "(build it with configs/sweeps/base.sweep_config)")
    if not sweep.folder:
        raise config_lib.ConfigError(f"{path}: --config.folder is required (where the runs' "
                                     "workdirs and the results go)")
    if sweep.executor not in EXECUTORS:
        raise config_lib.ConfigError(f"{path}: executor={sweep.executor!r}; expected one of "
                                     f"{', '.join(EXECUTORS)}")
    for key, value in (("parallel", sweep.parallel),
                       ("slurm.max_parallel", sweep.slurm.max_parallel)):
        if value < 0:
            raise config_lib.ConfigError(f"{path}: {key}={value}; expected >= 0 (0 = all)")
    if not sweep.seeds:
        raise config_lib.ConfigError(f"{path}: seeds is empty; expected at least one seed")
    if sweep.shared_data not in ("", "demo"):
        raise config_lib.ConfigError(f"{path}: shared_data={sweep.shared_data!r}; expected "
                                     "'' (each run's data.path) or 'demo'")
    for key, values in _pairs(sweep.grid, "grid", path):
        if not isinstance(values, list | tuple) or not values:
            raise config_lib.ConfigError(f"{path}: grid[{key!r}] must be a non-empty list of "
                                         f"values, got {values!r}")


def expand(sweep: ml_collections.ConfigDict, path: str = "sweep") -> list[RunSpec]:
    """Every run of the sweep: each `runs` entry × the grid's product × each seed."""
    check_sweep(sweep, path)
    folder = pathlib.Path(sweep.folder).absolute()
    grid = _pairs(sweep.grid, "grid", path)
    fixed = dict(_pairs(sweep.fixed, "fixed", path))
    for reserved in ("workdir", "seed"):
        for where, keys in (("fixed", fixed), ("grid", dict(grid)),
                            *((f"runs[{i}]", r) for i, r in enumerate(sweep.runs))):
            if reserved in keys:
                hint = "the sweep sets it per run" if reserved == "workdir" else "use seeds"
                raise config_lib.ConfigError(f"{path}: {where} sets {reserved!r}; {hint}")
    sets = [{**dict(_pairs(run_set, "runs", path)),
             **{key: value for (key, _), value in zip(grid, values, strict=True)},
             "seed": int(seed)}
            for run_set, values, seed in itertools.product(
                sweep.runs, itertools.product(*(v for _, v in grid)), sweep.seeds)]
    # A run is named by the overrides that tell it apart; the ones all runs share go to fixed.
    varying = [key for key in dict.fromkeys(k for o in sets for k in o)
               if len({json.dumps(o.get(key), default=str) for o in sets}) > 1]
    runs, names = [], {}
    for overrides in sets:
        shared = {k: v for k, v in overrides.items() if k not in varying}
        own = {k: v for k, v in overrides.items() if k in varying}
        name = name_of(own) or "base"
        if name in names:
            raise config_lib.ConfigError(f"{path}: two runs share the name {name!r} (the same "
                                         "overrides twice); make each run set distinct")
        names[name] = True
        runs.append(RunSpec(name, own, {**fixed, **shared}, folder / name))
    return runs


def check_overrides(base: str, runs: list[RunSpec], path: str,
                    extra: Mapping[str, Any] | None = None) -> None:
    """Build every run's config from the base before anything runs: an unknown key or a bad
    value is refused naming the key, its close matches and the run."""
    for run in runs:
        flags = run.flags(base, extra)
        overrides = [flag[len("--config."):] for flag in flags[1:]]
        try:
            config_lib.load_config(base, overrides)
        except config_lib.ConfigError as error:
            raise config_lib.ConfigError(f"{path}: run {run.name}: {error}") from None
