"""Arithmetic generator + verifier, chat template masks, SFT/preference/RL through prepare()."""

import json

import numpy as np
import pytest

from configs.data import get_config
from llm.data import DataError, chat, loaders, synthetic
from llm.data.prepare import prepare
from llm.data.tokenizer import Tokenizer


def test_verifier_is_exact():
    assert synthetic.check_arithmetic_answer("The answer is 42.", "42")
    assert synthetic.check_arithmetic_answer("so 3 + 4 = 7", 7)
    assert not synthetic.check_arithmetic_answer("The answer is 421.", "42")
    assert not synthetic.check_arithmetic_answer("no idea", "42")
    assert synthetic.check_arithmetic_answer("The answer is -5", "-5")


@pytest.mark.parametrize("difficulty", [1, 3, 5])
def test_answers_are_right(tmp_path, difficulty):
    paths = synthetic.generate("arithmetic", tmp_path, n=50, difficulty=difficulty, seed=1)
    for line in paths["rl"].read_text().splitlines():
        row = json.loads(line)
        expr = row["prompt"][len("What is "):-1]
        assert eval(expr) == int(row["answer"])  # noqa: S307
    for line in paths["preference"].read_text().splitlines():
        row = json.loads(line)
        assert row["chosen"] != row["rejected"]
    with pytest.raises(DataError, match="unknown synthetic generator"):
        synthetic.generate("nope", tmp_path)


def test_heldout_questions_never_appear_in_training_files(tmp_path):
    # Difficulty 1 has 200 distinct questions, so 4000 draws repeat every one of them often.
    paths = synthetic.generate("arithmetic", tmp_path, n=4000, difficulty=1, seed=0,
                               heldout=40)
    held = [json.loads(line) for line in paths["heldout"].read_text().splitlines()]
    prompts = {r["prompt"] for r in held}
    assert len(held) == len(prompts) == 40
    rows = {k: [json.loads(line) for line in paths[k].read_text().splitlines()]
            for k in ("sft", "preference", "rl")}
    assert all(len(r) == 4000 for r in rows.values())
    trained = ({r["messages"][0]["content"] for r in rows["sft"]}
               | {r["prompt"] for r in rows["preference"]} | {r["prompt"] for r in rows["rl"]})
    assert not trained & prompts
    assert len(trained) == 160  # every other question is still trained on
    # Without the split the same generator does ask them.
    plain = synthetic.generate("arithmetic", tmp_path / "plain", n=4000, difficulty=1, seed=0)
    assert prompts <= {json.loads(line)["prompt"] for line in plain["rl"].read_text()
                       .splitlines()}


def test_too_many_heldout_questions_is_one_error(tmp_path):
    with pytest.raises(DataError, match="too few distinct questions"):
        synthetic.generate("arithmetic", tmp_path, n=10, difficulty=1, heldout=200)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    paths = synthetic.generate("arithmetic", root / "raw", n=120, difficulty=2, seed=0)
    outs = {}
    for kind, path in paths.items():
        c = get_config()
        c.inputs, c.output_dir, c.num_workers = str(path), str(root / kind), 0
        c.tokenizer.vocab_size, c.split.validation = 300, 0.0
        c.dedup.near = False  # templated questions are near duplicates by design
        c.decontaminate.enabled = False
        outs[kind] = prepare(c)
    return outs


def test_chat_mask_is_exactly_the_assistant(prepared):
    tok = Tokenizer.load(prepared["sft"] / "tokenizer")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"}, {"role": "user", "content": "3+3?"},
            {"role": "assistant", "content": "6"}]
    ids, mask = chat.render_messages(tok, msgs)
    assert len(ids) == len(mask)
    marked = [i for i, m in zip(ids, mask, strict=True) if m]
    expected = (tok.encode("4") + [tok.role_ids["end"]] + tok.encode("6")
                + [tok.role_ids["end"], tok.eos_id])
    assert marked == expected
    prompt, _ = chat.render_messages(tok, msgs[:2], add_generation_prompt=True)
    assert prompt[-1] == tok.role_ids["assistant"]
    assert chat.render_prompt(tok, "2+2?") == chat.render_messages(
        tok, [msgs[1]], add_generation_prompt=True)[0]


def test_sft_loader_learns_only_answers(prepared):
    tok = Tokenizer.load(prepared["sft"] / "tokenizer")
    b = next(iter(loaders.sft_loader(prepared["sft"], "train", 64, 2, 0, 1)))
    learnt = b["targets"][b["loss_mask"] > 0]
    text = tok.decode([t for t in learnt if t < tok.vocab_size])
    assert "The answer is" in text and "What is" not in text


def test_preference_and_prompt_loaders(prepared):
    tok = Tokenizer.load(prepared["preference"] / "tokenizer")
    b = next(iter(loaders.preference_loader(prepared["preference"], "train", 48, 2, 0, 1)))
    for r in range(2):
        c = b["chosen_targets"][r][b["chosen_loss_mask"][r] > 0]
        j = b["rejected_targets"][r][b["rejected_loss_mask"][r] > 0]
        assert tok.decode(c).startswith("The answer is") and not np.array_equal(c, j)
    p = next(iter(loaders.prompt_loader(prepared["rl"], "train", 32, 4, 0, 1)))
    tok = Tokenizer.load(prepared["rl"] / "tokenizer")
    for r in range(4):
        ids = p["prompt_tokens"][r][:p["prompt_lengths"][r]]
        assert ids[-1] == tok.role_ids["assistant"]
        question = tok.decode(ids)
        expr = question[question.index("What is ") + 8:question.index("?")]
        assert eval(expr) == int(p["answer"][r])  # noqa: S307


def test_from_model_writes_verified_sft_and_preference_pairs(tmp_path):
    from flax import nnx

    from llm.model import ModelConfig, Transformer
    from llm.sampling.sampler import Sampler, row_completer

    class ByteTokenizer:
        bos_id, eos_id, pad_id, vocab_size = 256, 257, 258, 259

        def encode(self, text, add_bos=False, add_eos=False):
            return [256] * add_bos + list(text.encode("latin-1")) + [257] * add_eos

        def decode(self, ids):
            return bytes(i for i in ids if i < 256).decode("latin-1")

    cfg = ModelConfig(vocab_size=259, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1,
                      head_dim=16, d_ff=64, max_seq_len=64, init_std=0.3)
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    sampler = Sampler(graphdef, params, ByteTokenizer(), max_len=64)
    rows = [{"prompt": "What is 1 + 1?", "answer": 0}, {"prompt": "What is 2 + 3?", "answer": 1}]

    def parity(text, answer):  # a stand-in verifier that random text passes about half the time
        return len(text) > 0 and ord(text[0]) % 2 == int(answer)

    def run(out):
        complete = row_completer(sampler, batch_size=8, temperature=1.0, top_p=1.0,
                                 max_new_tokens=6)
        return synthetic.from_model(complete, rows, out, samples_per_prompt=6, verifier=parity,
                                    seed=3)

    paths = run(tmp_path / "a")
    read = lambda role: [json.loads(line) for line in open(paths[role])]
    samples, sft, pref = read("samples"), read("sft"), read("preference")
    assert len(samples) == 12
    assert all(s["correct"] == parity(s["completion"], s["answer"]) for s in samples)
    assert {s["correct"] for s in samples} == {True, False}  # the test exercises both sides
    for row in rows:
        mine = [s for s in samples if s["prompt"] == row["prompt"]]
        right = {s["completion"] for s in mine if s["correct"]}
        wrong = {s["completion"] for s in mine if not s["correct"]}
        got_sft = [m["messages"][1]["content"] for m in sft
                   if m["messages"][0]["content"] == row["prompt"]]
        assert sorted(got_sft) == sorted(right)
        pairs = [p for p in pref if p["prompt"] == row["prompt"]]
        assert len(pairs) == min(len(right), len(wrong))
        assert all(p["chosen"] in right and p["rejected"] in wrong for p in pairs)
    again = run(tmp_path / "b")
    assert all(open(paths[k]).read() == open(again[k]).read() for k in paths)
    with pytest.raises(DataError, match="row 1: expected 'prompt' and 'answer'"):
        synthetic.from_model(row_completer(sampler), [{"prompt": "x"}], tmp_path / "c")
