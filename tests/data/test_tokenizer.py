"""Tokenizer: exact round trips, special and role ids, save/load, token bytes."""

import json

import pytest

from llm.data import DataError
from llm.data.sources import iter_stdlib_sources
from llm.data.tokenizer import ROLE_TOKENS, Tokenizer, train_tokenizer

SAMPLES = ["def f(x):\n    return x + 1  # ünïcödé 漢字\n\n", "  leading spaces\ttab\n",
           "emoji 🙂 and \u00e9\u0301", ""]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    texts = [t for _, t in iter_stdlib_sources(limit=20)]
    return train_tokenizer(texts, tmp_path_factory.mktemp("tok"), vocab_size=600,
                           max_sentences=3000)


def test_round_trip_is_exact(tok):
    for s in SAMPLES:
        assert tok.decode(tok.encode(s)) == s
        assert b"".join(tok.token_bytes(i) for i in tok.encode(s)) == s.encode("utf-8")


def test_special_and_role_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
    assert tok.vocab_size == 600
    assert set(tok.role_ids) == set(ROLE_TOKENS)
    for role, piece in ROLE_TOKENS.items():
        assert tok.encode(piece) == [tok.role_ids[role]]
    ids = tok.encode("hi", add_bos=True, add_eos=True)
    assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert tok.decode(ids) == "hi"
    assert tok.encode_batch(["a b", "c"]) == [tok.encode("a b"), tok.encode("c")]


def test_save_load_same_encoding(tok, tmp_path):
    tok.save(tmp_path / "copy")
    # this project's metadata lives in a file of its own, never in HF's tokenizer_config.json
    assert not (tmp_path / "copy" / "tokenizer_config.json").exists()
    config = json.loads((tmp_path / "copy" / "llm_tokenizer.json").read_text())
    assert config["pad_id"] == 0 and config["role_ids"]["assistant"] == tok.role_ids["assistant"]
    again = Tokenizer.load(tmp_path / "copy")
    for s in SAMPLES:
        assert again.encode(s) == tok.encode(s)


def test_directory_written_before_llm_tokenizer_json_still_loads(tok, tmp_path):
    tok.save(tmp_path / "old")
    (tmp_path / "old" / "llm_tokenizer.json").rename(tmp_path / "old" / "tokenizer_config.json")
    again = Tokenizer.load(tmp_path / "old")
    assert (again.bos_id, again.eos_id, again.role_ids) == (tok.bos_id, tok.eos_id, tok.role_ids)
    assert not again.is_hf and again.chat_template is None


def test_missing_directory_is_clear(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Tokenizer.load(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="tokenizer.model or tokenizer.json"):
        Tokenizer.load(tmp_path / "empty")


def test_empty_corpus_is_clear(tmp_path):
    with pytest.raises(DataError, match="empty corpus"):
        train_tokenizer([], tmp_path, vocab_size=300)


def test_unigram_trains(tmp_path):
    texts = [t for _, t in iter_stdlib_sources(limit=5)]
    tok = train_tokenizer(texts, tmp_path, vocab_size=400, model_type="unigram")
    assert tok.decode(tok.encode(SAMPLES[0])) == SAMPLES[0]


def test_tokenizers_json_backend(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    model = tokenizers.models.BPE(unk_token="<unk>")
    hf = tokenizers.Tokenizer(model)
    hf.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    hf.train_from_iterator(["hello world, hello there"] * 20, trainer)
    hf.save(str(tmp_path / "tokenizer.json"))
    bare = Tokenizer.load(tmp_path)
    # as transformers reads it: a bare tokenizer.json names no special tokens
    assert bare.kind == "tokenizers" and (bare.bos_id, bare.eos_id, bare.eos_ids) == (-1, -1, ())
    assert bare.encode("hello", add_bos=True, add_eos=True) == bare.encode("hello")
    with pytest.raises(DataError, match="SFT: needs an end-of-sequence token"):
        bare.require("eos", "SFT")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True},
         "pad_token": "<pad>"}))
    tok = Tokenizer.load(tmp_path)
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
    assert not tok.add_bos_token  # its post-processor adds none
    assert tok.decode(tok.encode("hello world")) == "hello world"
    tok.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "tokenizer_config.json").read_bytes() == (
        tmp_path / "tokenizer_config.json").read_bytes()
    assert Tokenizer.load(tmp_path / "copy").encode("hello") == tok.encode("hello")


def test_corrupt_model_file_names_it(tmp_path):
    (tmp_path / "tokenizer.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(DataError, match="tokenizer.model: not a readable sentencepiece"):
        Tokenizer.load(tmp_path)
