"""prepare(): every setting is checked before the output folder is touched, with the key named."""

import json

import pytest
from test_prepare import _config

from llm.data import DataError
from llm.data.prepare import prepare


@pytest.mark.parametrize("key,value,match", [
    ("mixture.weights", "dataa=0", "mixture.weights.*'dataa' matches no input"),
    ("mixture.weights", "data=inf", "mixture.weights.*finite"),
    ("mixture.weights", "data=nan", "mixture.weights.*finite"),
    ("mixture.weights", "data=0", "mixture.weights.*every input"),
    ("dedup.num_perm", 0, "dedup.num_perm"),
    ("dedup.threshold", 5.0, "dedup.threshold"),
    ("dedup.threshold", 0.0, "dedup.threshold"),
    ("dedup.verify", "jacard", "dedup.verify.*'estimate'"),
    ("dedup.bands", 4, "dedup.bands"),
    ("dedup.ngram", 40, "dedup.ngram must be in 1..32"),
    ("decontaminate.ngram", 40, "^decontaminate.ngram must be in 1..32"),
    ("decontaminate.action", "dorp", "decontaminate.action"),
    ("clean.normalization", "NFKX", "clean.normalization.*NFKC"),
    ("tokenizer.max_sentences", 0, "tokenizer.max_sentences"),
    ("tokenizer.vocab_size", 0, "tokenizer.vocab_size"),
    ("tokenizer.model_type", "wordpiece", "tokenizer.model_type"),
    ("split.validation", float("nan"), "split.validation"),
    ("split.test", float("inf"), "split.test"),
    ("decontaminate.eval_files", "nope.jsonl", "decontaminate.eval_files.*does not exist"),
    ("executor", "rey", "executor"),
    ("num_workers", -1, "num_workers"),
])
def test_bad_setting_is_named_before_output_is_touched(raw, tmp_path, key, value, match):
    out = tmp_path / "out"
    with pytest.raises(DataError, match=match):
        prepare(_config(raw, out, **{key: value}))
    assert not out.exists()


def test_train_split_emptied_by_mixture_is_an_error(raw, tmp_path):
    with pytest.raises(DataError, match="train split is empty.*mixture.weights"):
        prepare(_config(raw, tmp_path / "out", **{"mixture.weights": "data=1e-12"}))


def test_no_training_documents_message_names_no_missing_file(raw, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(DataError, match="no training documents") as e:
        prepare(_config(raw, out, **{"clean.filters.min_words": 10_000}))
    assert "min_words" in str(e.value)
    assert "removed.jsonl" not in str(e.value) or (out / "removed.jsonl").exists()


def test_vocab_smaller_than_asked_is_reported(raw, tmp_path, capsys):
    out = prepare(_config(raw, tmp_path / "out", **{"tokenizer.vocab_size": 100_000}))
    meta = json.loads((out / "meta.json").read_text())
    assert meta["vocab_size"] < 100_000
    warning = capsys.readouterr().err
    assert "tokenizer.vocab_size=100000" in warning and str(meta["vocab_size"]) in warning
    report = json.loads((out / "report.json").read_text())
    assert report["tokenizer"] == {"requested_vocab_size": 100_000,
                                   "vocab_size": meta["vocab_size"]}
    assert any("tokenizer.vocab_size" in w for w in report["warnings"])
