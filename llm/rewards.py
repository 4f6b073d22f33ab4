"""Reward functions and verifiers by name, with TRL's signature.

    f(prompts: list[str], completions: list[str], **row_fields) -> list[float]

`row_fields` are the dataset's other columns as per-row lists (`answer=[...]`), as TRL
passes them to a `GRPOTrainer` reward function; a function takes the fields it needs and
ignores the rest. `get(name)` looks one up, `score(name, ...)` calls it and checks that it
returned one reward per completion, and `register(name)` adds one.

    exact       1.0 when the stripped completion equals the stripped `answer`
    arithmetic  1.0 when `llm.data.synthetic.check_arithmetic_answer` accepts the `answer`
    regex       1.0 when the row's `pattern` (a regular expression) is found in the completion
    format      1.0 when the whole stripped completion matches the row's `format_pattern`
    length_penalty  DAPO's soft overlong penalty from `completion_ids` and
                `max_completion_length`: 0 up to the last `overlong_buffer` tokens
                (default a fifth), then falling linearly to -1 at the limit
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Sequence
from typing import Any

from llm.data.synthetic import check_arithmetic_answer

RewardFn = Callable[..., list[float]]

REWARDS: dict[str, RewardFn] = {}


def register(name: str) -> Callable[[RewardFn], RewardFn]:
    """Decorator adding a reward function `f(prompts, completions, **row_fields)` as `name`."""
    def wrap(fn: RewardFn) -> RewardFn:
        if name in REWARDS:
            raise ValueError(f"reward {name!r} is already registered")
        REWARDS[name] = fn
        return fn
    return wrap


def names() -> list[str]:
    """The registered reward names, sorted."""
    return sorted(REWARDS)


def get(name: str) -> RewardFn:
    """The reward function registered as `name`; an unknown name is a ValueError with hints."""
    if name not in REWARDS:
        close = difflib.get_close_matches(name, REWARDS, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"reward={name!r}: unknown reward{hint}; known: {', '.join(names())}")
    return REWARDS[name]


def score(name: str, prompts: Sequence[str], completions: Sequence[str], **row_fields: Any
          ) -> list[float]:
    """Rewards of `completions` under the function `name`, one float per completion."""
    rewards = get(name)(list(prompts), list(completions), **row_fields)
    if len(rewards) != len(completions):
        raise ValueError(f"reward {name!r} returned {len(rewards)} rewards for "
                         f"{len(completions)} completions; expected one per completion")
    return [float(r) for r in rewards]


def _column(reward: str, row_fields: dict[str, Any], field: str, n: int) -> list[Any]:
    """Row field `field` as a list of n values; missing or misshapen is one ValueError."""
    if field not in row_fields:
        raise ValueError(f"reward {reward!r} needs the row field {field!r}; got fields "
                         f"{sorted(row_fields)}")
    values = list(row_fields[field])
    if len(values) != n:
        raise ValueError(f"reward {reward!r}: row field {field!r} has {len(values)} values "
                         f"for {n} completions")
    return values


@register("exact")
def exact(prompts: list[str], completions: list[str], **row_fields: Any) -> list[float]:
    """1.0 where completion.strip() == str(answer).strip(), else 0.0."""
    answers = _column("exact", row_fields, "answer", len(completions))
    return [float(c.strip() == str(a).strip()) for c, a in zip(completions, answers, strict=True)]


@register("arithmetic")
def arithmetic(prompts: list[str], completions: list[str], **row_fields: Any) -> list[float]:
    """1.0 where the completion states the exact integer `answer` ('answer is N' or last int)."""
    answers = _column("arithmetic", row_fields, "answer", len(completions))
    return [float(check_arithmetic_answer(c, a))
            for c, a in zip(completions, answers, strict=True)]


@register("regex")
def regex(prompts: list[str], completions: list[str], **row_fields: Any) -> list[float]:
    """1.0 where the row's `pattern` is found (`re.search`) in the completion, else 0.0."""
    patterns = _column("regex", row_fields, "pattern", len(completions))
    return [float(re.search(p, c) is not None)
            for c, p in zip(completions, patterns, strict=True)]


@register("format")
def format_reward(prompts: list[str], completions: list[str], **row_fields: Any) -> list[float]:
    """1.0 where the whole stripped completion matches the row's `format_pattern`, else 0.0."""
    patterns = _column("format", row_fields, "format_pattern", len(completions))
    return [float(re.fullmatch(p, c.strip(), flags=re.DOTALL) is not None)
            for c, p in zip(completions, patterns, strict=True)]


@register("length_penalty")
def length_penalty(prompts: list[str], completions: list[str], **row_fields: Any
                   ) -> list[float]:
    """0 for completions shorter than max_completion_length - buffer tokens, then linearly
    down to -1 at max_completion_length (DAPO's soft overlong punishment)."""
    n = len(completions)
    ids = _column("length_penalty", row_fields, "completion_ids", n)
    limits = _column("length_penalty", row_fields, "max_completion_length", n)
    buffers = row_fields.get("overlong_buffer") or [max(1, int(m) // 5) for m in limits]
    penalties = []
    for tokens, limit, buffer in zip(ids, limits, buffers, strict=True):
        over = len(tokens) - (int(limit) - int(buffer))
        penalties.append(-min(1.0, max(0.0, over / max(int(buffer), 1))))
    return penalties
