"""Preference rows: unusable pairs are counted skips with their removed.jsonl row, a pair
longer than seq_len is never cut silently, and a broken file is one clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_prepare import WORDS, _config

from llm.data import DataError, loaders
from llm.data.prepare import prepare


def write_pairs(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def good_rows(n, seed=0, long_every=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        size = 40 if long_every and i % long_every == 0 else 3
        rows.append({"prompt": " ".join(rng.choice(WORDS, 4)) + f" {i}",
                     "chosen": " ".join(rng.choice(WORDS, size)),
                     "rejected": " ".join(rng.choice(WORDS, 3)) + " no"})
    return rows


def test_identical_and_empty_pairs_are_counted_skips(tmp_path):
    rows = good_rows(20)
    rows[3]["rejected"] = rows[3]["chosen"]
    rows[5]["chosen"] = "   "
    rows[7]["rejected"] = ""
    out = prepare(_config(write_pairs(tmp_path / "pairs.jsonl", rows), tmp_path / "out"))
    report = json.loads((out / "report.json").read_text())
    dropped = json.dumps(report)
    for name, count in (("identical_pair", 1), ("empty_chosen", 1), ("empty_rejected", 1)):
        assert f'"{name}": {count}' in dropped, report
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["filter"], r["stage"]) for r in removed] == [
        (4, "identical_pair", "preference_rows"), (6, "empty_chosen", "preference_rows"),
        (8, "empty_rejected", "preference_rows")]
    assert all(r["source"].endswith("pairs.jsonl") for r in removed)
    chosen, _ = loaders.preference_records(out, "train")
    assert len(chosen) == 17


def test_file_without_chosen_names_file_line_and_key(tmp_path):
    rows = good_rows(4)
    del rows[2]["chosen"]
    path = write_pairs(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(DataError, match=r"pairs.jsonl.*3.*missing field 'chosen'"):
        prepare(_config(path, tmp_path / "out"))


@pytest.fixture
def long_pairs_dir(tmp_path):
    rows = good_rows(12, long_every=4)  # pairs 0, 4, 8 have a long chosen answer
    return prepare(_config(write_pairs(tmp_path / "pairs.jsonl", rows), tmp_path / "out"))


def first_batch(prepared, mode, seq_len):
    loader = loaders.preference_loader(prepared, "train", seq_len, 1, 0, 1, shuffle=False,
                                       truncation_mode=mode)
    return [batch for _, batch in zip(range(12), iter(loader), strict=False)]


def test_long_pairs_are_skipped_or_truncated_as_asked(long_pairs_dir):
    chosen, rejected = loaders.preference_records(long_pairs_dir, "train")
    seq_len = int(max(chosen.lengths[1], rejected.lengths.max())) + 1
    long = loaders.long_pairs(chosen, rejected, seq_len)
    assert list(long) == [0, 4, 8]
    assert len(first_batch(long_pairs_dir, "skip", seq_len)) == 9
    keep_start = first_batch(long_pairs_dir, "keep_start", seq_len)
    keep_end = first_batch(long_pairs_dir, "keep_end", seq_len)
    assert len(keep_start) == len(keep_end) == 12
    ids = chosen.tokens(0)
    np.testing.assert_array_equal(keep_start[0]["chosen_tokens"][0], ids[:seq_len])
    np.testing.assert_array_equal(keep_end[0]["chosen_tokens"][0], ids[-seq_len:])
    # keep_end keeps every answer token the loss is on: the answer's end (EOS) included
    assert keep_end[0]["chosen_loss_mask"][0].sum() == chosen.mask(0)[-seq_len + 1:].sum()


def test_unknown_truncation_mode_is_an_error(long_pairs_dir):
    with pytest.raises(DataError, match="truncation_mode='left'"):
        first_batch(long_pairs_dir, "left", 64)


def prompt_ids(records, i) -> tuple:
    """The prompt part (loss mask 0) of record i's token ids."""
    return tuple(records.tokens(i)[records.mask(i) == 0].tolist())


def test_dedup_is_by_the_whole_pair(tmp_path):
    """Two right-over-wrong pairs sharing prompt and chosen are two pairs; only a repeat of
    the whole pair is a duplicate."""
    rows = good_rows(10)
    rows.append(dict(rows[0], rejected="another wrong answer"))
    rows.append(dict(rows[1]))  # the whole pair again
    out = prepare(_config(write_pairs(tmp_path / "pairs.jsonl", rows), tmp_path / "out",
                          **{"dedup.near": False}))
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["filter"]) for r in removed] == [(12, "exact_duplicate")]
    chosen, rejected = loaders.preference_records(out, "train")
    assert len(chosen) == len(rejected) == 11


def test_the_split_is_by_prompt(tmp_path):
    """Pairs sharing a prompt land on one side of the train/validation split together."""
    rng = np.random.default_rng(1)
    rows = [{"prompt": f"question {q}", "chosen": f"right {q} {k}",
             "rejected": " ".join(rng.choice(WORDS, 3)) + f" {k}"}
            for q in range(40) for k in range(3)]
    out = prepare(_config(write_pairs(tmp_path / "pairs.jsonl", rows), tmp_path / "out",
                          **{"dedup.near": False, "split.validation": 0.3}))
    sides = {}
    for split in ("train", "validation"):
        chosen, _ = loaders.preference_records(out, split)
        sides[split] = [prompt_ids(chosen, i) for i in range(len(chosen))]
    assert len(sides["train"]) + len(sides["validation"]) == 120
    assert sides["validation"] and not set(sides["train"]) & set(sides["validation"])
    for split, prompts in sides.items():  # every prompt keeps all three of its pairs
        assert all(prompts.count(p) == 3 for p in prompts), split
