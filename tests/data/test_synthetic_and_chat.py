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


def test_pair_is_prompt_then_reply_and_stop_ids_end_a_turn(prepared):
    tok = Tokenizer.load(prepared["sft"] / "tokenizer")
    pair = chat.render_pair(tok, "2+2?", "4")
    assert pair.ids[:len(pair.prompt_ids)] == pair.prompt_ids == chat.render_prompt(tok, "2+2?")
    replied = [i for i, m in zip(pair.ids, pair.mask, strict=True) if m]
    assert replied == tok.encode("4") + [tok.role_ids["end"], tok.eos_id]
    assert chat.render_pair(tok, [{"role": "user", "content": "2+2?"}], "4") == pair
    assert tok.stop_ids == (tok.eos_id, tok.role_ids["end"]) and tok.eos_ids == (tok.eos_id,)


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


def test_sums_hold_out_200_of_800_questions_and_answer_right(tmp_path):
    # The outcome tests' start: operands 0-19, + and -; 600 questions left to train on.
    paths = synthetic.generate("sums", tmp_path, n=4000, difficulty=1, seed=0, heldout=200)
    held = {json.loads(line)["prompt"] for line in paths["heldout"].read_text().splitlines()}
    rl = [json.loads(line) for line in paths["rl"].read_text().splitlines()]
    for row in rl:
        a, op, b = row["prompt"][len("What is "):-1].split()
        assert 0 <= int(a) < 20 and 0 <= int(b) < 20 and op in "+-"
        assert eval(f"{a} {op} {b}") == int(row["answer"])  # noqa: S307
    assert len(held) == 200 and not held & {r["prompt"] for r in rl}
    assert len({r["prompt"] for r in rl}) == 600
    with pytest.raises(DataError, match="sums difficulty must be in 1..5"):
        synthetic.generate("sums", tmp_path, n=1, difficulty=0)
