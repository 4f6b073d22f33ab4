"""Reward functions for online RL: chosen by name, weighted, validated row by row.

`rl.reward_funcs` names functions in the registry (`llm/rewards.py`) or in the user's
modules (`rl.reward_modules=my_rewards,other`: imported by name; a module may register its
functions with `llm.rewards.register` or just define them), `rl.reward_weights` weighs them
(TRL's sum of weighted rewards). Every function has TRL's signature
`f(prompts, completions, **row_fields) -> list[float]`. A function that raises, returns the
wrong count or a non-finite value is one `RewardError` naming the function and the row.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from llm import rewards as registry


class RewardError(ValueError):
    """A reward function or its configuration is unusable."""


@dataclasses.dataclass
class RewardFunctions:
    """The functions to score with, their names and weights."""

    names: list[str]
    fns: list[Callable[..., list[float]]]
    weights: np.ndarray  # [F]


def split_names(value: str) -> list[str]:
    """'a, b' → ['a', 'b'] (config lists are comma-separated strings)."""
    return [part.strip() for part in str(value).split(",") if part.strip()]


def import_modules(modules: str, key: str = "rl.reward_modules") -> list[Any]:
    """Import each comma-separated module; one RewardError names a module that fails."""
    loaded = []
    for name in split_names(modules):
        try:
            loaded.append(importlib.import_module(name))
        except Exception as error:  # noqa: BLE001 - any import failure is the user's module
            raise RewardError(f"{key}={modules!r}: module {name!r} does not import: "
                              f"{type(error).__name__}: {error}") from None
    return loaded


def load(reward_funcs: str, reward_weights: str = "", reward_modules: str = "",
         key: str = "rl") -> RewardFunctions:
    """Resolve `reward_funcs` (registry names or functions of `reward_modules`) and weights."""
    modules = import_modules(reward_modules, f"{key}.reward_modules")
    names = split_names(reward_funcs)
    if not names:
        raise RewardError(f"{key}.reward_funcs is empty: name at least one of "
                          f"{registry.names()} or a function of {key}.reward_modules")
    fns = []
    for name in names:
        found = [getattr(m, name) for m in modules if callable(getattr(m, name, None))]
        if found:
            fns.append(found[0])
        elif name in registry.REWARDS:
            fns.append(registry.REWARDS[name])
        else:
            try:
                registry.get(name)  # its error lists the known names and close matches
            except ValueError as error:
                raise RewardError(f"{key}.reward_funcs: {error}; or define it in a module "
                                  f"named by {key}.reward_modules") from None
    weights = [float(w) for w in split_names(reward_weights)] or [1.0] * len(names)
    if len(weights) != len(names) or not all(math.isfinite(w) for w in weights):
        raise RewardError(f"{key}.reward_weights={reward_weights!r}: expected {len(names)} "
                          f"finite numbers, one per reward function {names}")
    return RewardFunctions(names, fns, np.asarray(weights, np.float32))


def _row_hint(prompts: Sequence[str], completions: Sequence[str], row: int) -> str:
    return f"row {row} (prompt {prompts[row][-60:]!r}, completion {completions[row][:60]!r})"


def _call(name: str, fn: Callable, prompts: list[str], completions: list[str],
          row_fields: dict[str, list]) -> list[float]:
    """One function's rewards; a failure is found row by row and reported with its row."""
    try:
        values = fn(prompts, completions, **row_fields)
    except Exception as error:  # noqa: BLE001 - user code: name it and the row
        for row in range(len(completions)):
            try:
                fn(prompts[row:row + 1], completions[row:row + 1],
                   **{k: v[row:row + 1] for k, v in row_fields.items()})
            except Exception as row_error:  # noqa: BLE001
                raise RewardError(f"reward function {name!r} raised on "
                                  f"{_row_hint(prompts, completions, row)}: "
                                  f"{type(row_error).__name__}: {row_error}") from None
        raise RewardError(f"reward function {name!r} raised on a batch of "
                          f"{len(completions)} rows: {type(error).__name__}: {error}") from None
    values = list(values) if values is not None else []
    if len(values) != len(completions):
        raise RewardError(f"reward function {name!r} returned {len(values)} values for "
                          f"{len(completions)} completions; expected one per completion")
    out = []
    for row, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number):
            raise RewardError(f"reward function {name!r} returned {value!r} on "
                              f"{_row_hint(prompts, completions, row)}; expected a finite "
                              "number")
        out.append(number)
    return out


def score(funcs: RewardFunctions, prompts: list[str], completions: list[str],
          row_fields: dict[str, list]) -> tuple[np.ndarray, np.ndarray, float]:
    """(weighted rewards [R], rewards per function [R, F], seconds) of one rollout batch."""
    start = time.perf_counter()
    per_func_RF = np.stack([_call(n, f, prompts, completions, row_fields)
                            for n, f in zip(funcs.names, funcs.fns, strict=True)], axis=1)
    per_func_RF = per_func_RF.astype(np.float32)
    return per_func_RF @ funcs.weights, per_func_RF, time.perf_counter() - start
