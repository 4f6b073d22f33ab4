"""Named reward functions: each one's values, the registry's errors and the length check."""

import pytest

from llm import rewards


def test_names_lists_every_registered_reward():
    assert {"exact", "arithmetic", "regex"} <= set(rewards.names())
    assert rewards.names() == sorted(rewards.REWARDS)


def test_exact_compares_stripped_text():
    got = rewards.score("exact", ["q"] * 4, [" 42\n", "42.0", "The answer is 42.", "x"],
                        answer=[42, "42", "42", " x "])
    assert got == [1.0, 0.0, 0.0, 1.0]


def test_arithmetic_uses_the_stated_answer():
    completions = ["The answer is 7.", "I think 3, then 7", "answer is 8, not 7", "no number",
                   "The answer is -2."]
    got = rewards.score("arithmetic", ["q"] * 5, completions, answer=["7", 7, 7, 7, "-2"])
    assert got == [1.0, 1.0, 0.0, 0.0, 1.0]


def test_regex_searches_the_row_pattern():
    got = rewards.score("regex", ["q"] * 3, ["<think>a</think> 4", "4", "abc"],
                        pattern=[r"<think>.*</think>", r"^\d+$", r"^b"])
    assert got == [1.0, 1.0, 0.0]


def test_rewards_ignore_fields_they_do_not_use():
    # TRL passes every dataset column (and more); a reward takes only what it needs.
    assert rewards.score("exact", ["q"], ["1"], answer=["1"], difficulty=[3]) == [1.0]


def test_missing_or_short_row_field_is_one_clear_error():
    with pytest.raises(ValueError, match="reward 'exact' needs the row field 'answer'"):
        rewards.score("exact", ["q"], ["1"])
    with pytest.raises(ValueError, match="'answer' has 1 values for 2 completions"):
        rewards.score("arithmetic", ["q", "q"], ["1", "2"], answer=["1"])


def test_unknown_name_lists_close_matches_and_known_names():
    with pytest.raises(ValueError, match=r"reward='exakt'.*did you mean exact\?") as error:
        rewards.get("exakt")
    assert str(error.value).endswith("known: " + ", ".join(rewards.names()))


def test_score_checks_one_reward_per_completion():
    @rewards.register("_test_short")
    def short(prompts, completions, **row_fields):
        return [1.0]

    try:
        with pytest.raises(ValueError, match="returned 1 rewards for 2 completions"):
            rewards.score("_test_short", ["a", "b"], ["x", "y"])
        with pytest.raises(ValueError, match="already registered"):
            rewards.register("_test_short")(short)
    finally:
        del rewards.REWARDS["_test_short"]
