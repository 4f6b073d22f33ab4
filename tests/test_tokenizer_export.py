"""llm/hf/tokenizer_export.py: transformers loads the export and gives sentencepiece's ids.

Small BPE and unigram tokenizers are trained with `train_tokenizer` on a generated corpus
(prose, indented code, digits, accents, a little CJK; emoji and most CJK are left to byte
fallback), exported with `write_hf_tokenizer` and loaded with `AutoTokenizer`.
"""

import json
import pathlib
import random

import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import sentencepiece as spm  # noqa: E402

from llm.data import DataError  # noqa: E402
from llm.data.chat import render_messages  # noqa: E402
from llm.data.tokenizer import ROLE_TOKENS, SPM_FILE, train_tokenizer  # noqa: E402
from llm.hf.tokenizer_export import ROLE_TOKENS_TEMPLATE, write_hf_tokenizer  # noqa: E402

WORDS = ("the of and to in is that for it as with was on be by this are from at or an have "
         "not which one you all were they but we there their can has more time when what "
         "über café naïve résumé façade 日本 東京").split()

TEXTS = [
    "", " ", "  ", "\n", "\t", "Hello world", "Hello world.", "hello, world! ok?",
    " leading space", "   leading spaces", "trailing space ", "trailing spaces   ",
    "two  spaces and   three    four", " " * 17, "\n\n\n", "a\n\nb\n", "mix\r\nCRLF\r\n",
    "def f(x):\n\treturn x  +  1\n", "class A:\n    def g(self):\n        return {'k': [1, 2]}\n",
    "\tif x:\n\t\ty = 2  # tabs\n", "for i in range(10):\n        print(i)\n",
    "1234567890", "3.14159 -42 +7e10 0x1F 1,000,000", "year 2024, 12:30pm",
    "café naïve résumé über", "e\u0301 composed vs é", "日本語のテキスト", "東京 漢字 中文",
    "emoji 🙂🚀 and 👩‍👩‍👧", "Ωmega 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ß ﬁ", "\u3000ideographic space\u00a0nbsp",
    "<|user|>", "<|user|>hi<|end|>", "a <|assistant|> b<|end|>\n<|system|>", "x<|end|",
    "<|end|><|end|>", "<|", "|>", "<0x41> <0xE6>x <<0x41>>", "0x41 <0x4", "<s without close",
    "Hello , world . it ' s n't", "a" * 40, "=" * 30, "-" * 21, "#" * 9 + " title",
]


def _random_text(rng: random.Random) -> str:
    parts = [*WORDS, " ", " ", "  ", "    ", "\n", "\t", "0", "7", "42", ".", ",", "(", ")",
             ":", "_", "🙂", "漢", "é", *ROLE_TOKENS.values()]
    return "".join(rng.choice(parts) + rng.choice(["", " "]) for _ in range(rng.randint(0, 25)))


def _corpus(rng: random.Random) -> list[str]:
    docs = []
    for n in range(300):
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40)))
        if n % 3 == 0:
            docs.append(f"def f{n}(x, y):\n    if x > {rng.randint(0, 9999)}:\n"
                        f"        return x  +  y  # {words}\n\treturn None\n")
        else:
            docs.append(f"{words.capitalize()}, {rng.randint(0, 10**6)} ({rng.random():.3f}).\n")
    return docs


TEXTS += [_random_text(random.Random(seed)) for seed in range(300)]


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def exported(request, tmp_path_factory):
    """(model type, our Tokenizer, SentencePieceProcessor, transformers tokenizer)."""
    root = tmp_path_factory.mktemp(request.param)
    tok = train_tokenizer(_corpus(random.Random(0)), root / "spm", vocab_size=500,
                          model_type=request.param)
    sp = spm.SentencePieceProcessor(model_file=str(root / "spm" / SPM_FILE))
    write_hf_tokenizer(root / "spm" / SPM_FILE, root / "hf", bos_id=tok.bos_id,
                       eos_id=tok.eos_id, pad_id=tok.pad_id, unk_id=sp.unk_id(),
                       chat_template=ROLE_TOKENS_TEMPLATE)
    return request.param, tok, sp, transformers.AutoTokenizer.from_pretrained(root / "hf")


def _same_ids(kind: str, sp, want: list[int], got: list[int], context) -> bool:
    """Assert `got == want`, except (unigram only) for pieces of one repeated character in
    another order: a tie of equal scores that sentencepiece breaks by float32 rounding.
    Returns False for such a tie."""
    if got == want:
        return True
    pieces = [sp.id_to_piece(i) for i in want], [sp.id_to_piece(i) for i in got]
    assert kind == "unigram" and sorted(want) == sorted(got), (context, *pieces)
    assert all(len(set(a + b)) == 1 for a, b in zip(*pieces, strict=True) if a != b), (
        context, *pieces)
    return False


def test_encode_matches_sentencepiece(exported):
    kind, tok, sp, hf = exported
    ties = [text for text in TEXTS
            if not _same_ids(kind, sp, sp.encode(text), hf.encode(text, add_special_tokens=False),
                             text)]
    assert len(ties) <= len(TEXTS) // 20, ties  # rare (never for BPE: asserted above)
    # Byte fallback and the role tokens are really exercised.
    assert any(sp.is_byte(i) for i in sp.encode("🙂"))
    for role, piece in ROLE_TOKENS.items():
        assert hf.encode(f"a{piece}b", add_special_tokens=False) == sp.encode(f"a{piece}b")
        assert hf.convert_tokens_to_ids(piece) == tok.role_ids[role]


def test_batch_encode_matches(exported):
    kind, _, sp, hf = exported
    batch = hf(TEXTS, add_special_tokens=False)["input_ids"]
    assert batch == [hf.encode(text, add_special_tokens=False) for text in TEXTS]
    if kind == "bpe":
        assert batch == sp.encode(TEXTS)


def test_decode_round_trips(exported):
    _, _, sp, hf = exported
    for text in TEXTS:
        ids = sp.encode(text)
        assert hf.decode(ids) == sp.decode(ids) == text
        assert hf.decode(hf.encode(text, add_special_tokens=False)) == text


def test_special_tokens(exported):
    _, tok, sp, hf = exported
    assert (hf.bos_token, hf.eos_token, hf.pad_token, hf.unk_token) == ("<s>", "</s>", "<pad>",
                                                                        "<unk>")
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id, sp.unk_id())
    # add_special_tokens=True (the default) prepends BOS only; False adds nothing.
    assert hf("Hello world")["input_ids"] == [tok.bos_id] + sp.encode("Hello world")
    assert hf.encode("") == [tok.bos_id] and hf.encode("", add_special_tokens=False) == []
    assert hf.decode(hf.encode("Hi there"), skip_special_tokens=True) == "Hi there"
    # The one documented difference: the literal text of a control piece is that piece.
    assert hf.encode("<s>", add_special_tokens=False) == [tok.bos_id] != sp.encode("<s>")


CONVERSATIONS = [
    [{"role": "user", "content": "hi"}],
    [{"role": "assistant", "content": "I start."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2 + 2?"},
     {"role": "assistant", "content": "4"}],
    [{"role": "system", "content": ""}, {"role": "user", "content": " spaced  out "},
     {"role": "assistant", "content": "\tcode:\n    x = 1\n"}, {"role": "user", "content": "\n"},
     {"role": "assistant", "content": "emoji 🙂 日本 and <|end|> inside"}],
    [{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
     {"role": "system", "content": "late system"}],
    [{"role": "user", "content": "one"}, {"role": "assistant", "content": "two"},
     {"role": "user", "content": "three"}],
]


def _random_conversation(rng: random.Random) -> list[dict]:
    return [{"role": rng.choice(["system", "user", "assistant"]),
             "content": _random_text(rng)}
            for _ in range(rng.randint(1, 6))]


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_render_messages(exported, add_generation_prompt):
    kind, tok, sp, hf = exported
    conversations = CONVERSATIONS + [_random_conversation(random.Random(s)) for s in range(40)]
    ties = 0
    for messages in conversations:
        want, _ = render_messages(tok, messages, add_generation_prompt=add_generation_prompt)
        got = hf.apply_chat_template(messages, tokenize=True, return_dict=False,
                                     add_generation_prompt=add_generation_prompt)
        ties += not _same_ids(kind, sp, want, got, hf.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt))
    assert ties <= len(conversations) // 10


def test_chat_template_refuses_unknown_roles(exported):
    _, tok, _, hf = exported
    messages = [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]
    with pytest.raises(DataError, match="unknown chat role 'tool' in message 1"):
        render_messages(tok, messages)
    with pytest.raises(Exception, match="unknown chat role tool in message 1"):
        hf.apply_chat_template(messages, tokenize=False)


def test_files_and_config(exported, tmp_path):
    _, _, _, hf = exported
    out = pathlib.Path(hf.name_or_path)
    assert sorted(p.name for p in out.iterdir()) == [
        "chat_template.jinja", "tokenizer.json", "tokenizer_config.json"]
    assert (out / "chat_template.jinja").read_text() == ROLE_TOKENS_TEMPLATE
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == ROLE_TOKENS_TEMPLATE  # for transformers before .jinja
    hf.save_pretrained(tmp_path)  # transformers writes it back and reads it the same
    again = transformers.AutoTokenizer.from_pretrained(tmp_path)
    for text in ("  a\tb <|user|> 🙂", "x = 1\n"):
        assert again.encode(text) == hf.encode(text)
    assert again.chat_template == ROLE_TOKENS_TEMPLATE


def test_a_wrong_export_is_caught(exported, tmp_path):
    """A pipeline with the dummy-prefix space that HF's Llama converter adds fails the checks."""
    _, _, sp, hf = exported
    hf.save_pretrained(tmp_path)
    path = tmp_path / "tokenizer.json"
    spec = json.loads(path.read_text())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "\u2581"}, spec["normalizer"]]}
    path.write_text(json.dumps(spec))
    wrong = transformers.AutoTokenizer.from_pretrained(tmp_path)
    assert wrong.encode("Hello", add_special_tokens=False) != sp.encode("Hello")
    assert wrong.encode("x", add_special_tokens=False) == sp.encode(" x")


def test_unsupported_model_is_refused(tmp_path):
    """sentencepiece's defaults (NFKC, dummy prefix) are not what the export reproduces."""
    spm.SentencePieceTrainer.train(sentence_iterator=iter(_corpus(random.Random(1))),
                                   model_prefix=str(tmp_path / "m"), vocab_size=200,
                                   minloglevel=2)
    with pytest.raises(ValueError, match="normalization 'nmt_nfkc'.*add_dummy_prefix=True"):
        write_hf_tokenizer(tmp_path / "m.model", tmp_path / "hf", bos_id=1, eos_id=2,
                           pad_id=-1, unk_id=0, chat_template=ROLE_TOKENS_TEMPLATE)


def test_export_hf_of_a_model_trained_here_chats_with_the_trained_ids(exported, tmp_path):
    from flax import nnx

    from llm.hf import convert as hf_convert
    from llm.model import ModelConfig, Transformer

    kind, tok, sp, _ = exported
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=16, d_ff=48, max_seq_len=64)
    _, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    hf_convert.export_hf(cfg, params, str(tmp_path / "export"), dtype="float32",
                         tokenizer_dir=str(tok.directory))
    # no file of this project's leaks into the export; transformers reads its own
    assert not (tmp_path / "export" / "llm_tokenizer.json").exists()
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    assert (loaded.bos_token_id, loaded.eos_token_id) == (tok.bos_id, tok.eos_id)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (tok.bos_id, tok.eos_id)
    for messages in CONVERSATIONS:
        want, _ = render_messages(tok, messages)
        got = loaded.apply_chat_template(messages, tokenize=True, return_dict=False)
        assert _same_ids(kind, sp, want, got, messages)


def test_export_hf_carries_a_chat_template_override(tmp_path):
    import eval_helpers
    from flax import nnx

    from llm.data.prepare import with_template
    from llm.data.tokenizer import Tokenizer
    from llm.hf import convert as hf_convert
    from llm.model import ModelConfig, Transformer

    source = eval_helpers.tokenizer_dir(tmp_path / "hf_tok")
    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{{ eos_token }}"
                        "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    with_template(Tokenizer.load(source), str(template)).save(tmp_path / "tok")
    tok = Tokenizer.load(tmp_path / "tok")
    for name in ("tokenizer.json", "tokenizer_config.json"):  # HF files stay byte for byte
        assert (tmp_path / "tok" / name).read_bytes() == (source / name).read_bytes()
    cfg = ModelConfig(vocab_size=tok.vocab_size, d_model=32, n_layers=1, n_heads=2,
                      n_kv_heads=1, head_dim=16, d_ff=48, max_seq_len=64)
    _, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    hf_convert.export_hf(cfg, params, str(tmp_path / "export"), dtype="float32",
                         tokenizer_dir=str(tmp_path / "tok"))
    loaded = transformers.AutoTokenizer.from_pretrained(tmp_path / "export")
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "world"}]
    want, mask = render_messages(tok, messages)
    assert loaded.apply_chat_template(messages, tokenize=True, return_dict=False) == want
    assert loaded.decode([i for i, m in zip(want, mask, strict=True) if m]) == "world</s>"
