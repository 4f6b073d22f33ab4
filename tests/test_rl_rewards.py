"""Reward functions for RL: registry and user modules, weights, errors naming function and
row; the format and length-penalty rewards."""

import sys

import numpy as np
import pytest

from llm import rewards
from llm.rl import rewards as rl_rewards


def test_format_and_length_penalty():
    pattern = r".*answer is -?\d+\.?"
    assert rewards.format_reward([], ["The answer is 12.", "twelve"],
                                 format_pattern=[pattern] * 2) == [1.0, 0.0]
    # limit 10, buffer 2: free up to 8 tokens, -0.5 at 9, -1 at 10.
    out = rewards.length_penalty([], ["a"] * 3, completion_ids=[[0] * 8, [0] * 9, [0] * 10],
                                 max_completion_length=[10] * 3, overlong_buffer=[2] * 3)
    assert out == [0.0, -0.5, -1.0]


def test_weights_combine_rewards():
    funcs = rl_rewards.load("exact,format", "1.0,0.5")
    total, per_func, _ = rl_rewards.score(funcs, ["p", "p"], ["The answer is 3.", "3"],
                                          {"answer": ["3", "3"],
                                           "format_pattern": [r".*answer is \d+\."] * 2})
    np.testing.assert_allclose(per_func, [[0.0, 1.0], [1.0, 0.0]])
    np.testing.assert_allclose(total, [0.5, 1.0])


def test_unknown_reward_and_bad_weights_and_bad_module():
    with pytest.raises(rl_rewards.RewardError, match="did you mean exact"):
        rl_rewards.load("exactt")
    with pytest.raises(rl_rewards.RewardError, match="reward_weights='1,2'.*expected 1"):
        rl_rewards.load("exact", "1,2")
    with pytest.raises(rl_rewards.RewardError, match="module 'no_such_rewards_mod' does not "
                       "import: ModuleNotFoundError"):
        rl_rewards.load("exact", reward_modules="no_such_rewards_mod")


def test_user_module_function_errors_name_the_function_and_row(tmp_path, monkeypatch):
    (tmp_path / "my_rewards_19.py").write_text(
        "def picky(prompts, completions, **kw):\n"
        "    return [1.0 / (len(c) - 3) for c in completions]\n"
        "def short(prompts, completions, **kw):\n    return [1.0]\n"
        "def nan(prompts, completions, **kw):\n"
        "    return [float('nan') if c == 'bad' else 0.0 for c in completions]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        funcs = rl_rewards.load("picky,short,nan", reward_modules="my_rewards_19")
        prompts = ["p0", "p1", "p2"]
        with pytest.raises(rl_rewards.RewardError,
                           match="'picky' raised on row 1 .*ZeroDivisionError"):
            rl_rewards.score(funcs, prompts, ["abcde", "abc", "ok12"], {})
        one = rl_rewards.load("short", reward_modules="my_rewards_19")
        with pytest.raises(rl_rewards.RewardError, match="'short' returned 1 values for 3"):
            rl_rewards.score(one, prompts, ["a", "b", "c"], {})
        nan = rl_rewards.load("nan", reward_modules="my_rewards_19")
        with pytest.raises(rl_rewards.RewardError, match="'nan' returned nan on row 2"):
            rl_rewards.score(nan, prompts, ["a", "b", "bad"], {})
    finally:
        sys.modules.pop("my_rewards_19", None)
