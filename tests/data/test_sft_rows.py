"""SFT rows with nothing to learn are dropped with a reason at preparation; a dataset where
no row has a target is an error before any training. (A batch with no target token during
training: tests/test_sft_targets.py.)"""

import json

import numpy as np
import pytest
from test_prepare import _config

from llm.data import DataError
from llm.data.prepare import prepare

WORDS = "red blue green gold pink gray teal navy lime plum".split()


def _chat_rows(path, n, without_assistant):
    """n chat rows; those whose index is in `without_assistant` have only user turns."""
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            words = " ".join(rng.choice(WORDS, 4))
            turns = [{"role": "user", "content": f"repeat {i}: {words}"}]
            if i not in without_assistant:
                turns.append({"role": "assistant", "content": words})
            f.write(json.dumps({"messages": turns}) + "\n")


def test_rows_without_targets_are_dropped_and_listed(tmp_path):
    raw = tmp_path / "chat.jsonl"
    lacking = set(range(0, 40, 4))
    _chat_rows(raw, 40, lacking)
    out = prepare(_config(raw, tmp_path / "out", **{"tokenizer.vocab_size": 300}))
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    ours = [r for r in removed if r["stage"] == "sft_rows"]
    assert sorted(r["line"] for r in ours) == sorted(i + 1 for i in lacking)
    assert {r["filter"] for r in ours} == {"no_target_tokens"}
    assert all(r["source"] == str(raw) for r in ours)
    report = json.loads((out / "report.json").read_text())
    clean = next(s for s in report["stages"] if s["stage"] == "clean")
    assert clean["dropped"]["no_target_tokens"] == len(lacking)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["sft"]["documents"] == 40 - len(lacking)


def test_a_dataset_without_any_target_is_an_error(tmp_path):
    raw = tmp_path / "chat.jsonl"
    _chat_rows(raw, 12, set(range(12)))
    with pytest.raises(DataError, match="no_target_tokens=12"):
        prepare(_config(raw, tmp_path / "out", **{"tokenizer.vocab_size": 300}))
