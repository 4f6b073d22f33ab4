"""The AI judge: order-averaged scores, principles, determinism; bad inputs to the modes."""

from __future__ import annotations

import numpy as np
import pytest
from label_helpers import ByteTokenizer, read_jsonl, tiny_model, write_candidates

from configs import label as label_config
from llm.config import load_config
from llm.label import judge, modes
from llm.label.store import Candidate, LabelError
from llm.sampling.sampler import plain_chat_template

ROWS = [{"id": "p1", "prompt": "2 + 2?", "responses": ["4", "5", "four", "4"]},
        {"id": "p2", "prompt": "Capital of France?", "responses": ["Paris", "Lyon"]}]


def tiny_judge():
    graphdef, params = tiny_model(seed=3)
    tok = ByteTokenizer()

    def render(text):
        return tok.encode(plain_chat_template([{"role": "user", "content": text}]),
                          add_bos=True)

    return judge.ModelJudge(graphdef, params, render, (ord("A"), ord("B")), batch_size=4)


def test_order_averaged_score_is_exactly_antisymmetric_for_a_biased_tiny_judge():
    model = tiny_judge()
    pairs = [("be brief", "q", "yes", "no"), ("be kind", "why?", "because", "I do not know"),
             ("be honest", "2+2", "4", "22")]
    s_xy = judge.order_averaged_scores(model, pairs)
    s_yx = judge.order_averaged_scores(model, [(p, q, y, x) for p, q, x, y in pairs])
    assert np.array_equal(s_xy, -s_yx)
    assert np.all(np.abs(s_xy) <= 1.0)
    # Shown in one order only, the tiny judge leans towards a position: q(x,y) + q(y,x) != 1.
    q_xy = judge.first_probability(model([judge.judge_prompt(*p) for p in pairs]))
    q_yx = judge.first_probability(model([judge.judge_prompt(p, q, y, x)
                                          for p, q, x, y in pairs]))
    assert np.max(np.abs(q_xy + q_yx - 1.0)) > 1e-3


def test_the_principle_is_in_the_prompt_and_results_are_deterministic_for_a_seed():
    seen = []

    def recording(texts):
        seen.extend(texts)
        return tiny_judge()(texts)

    cands = [Candidate(r["id"], r["prompt"], r["responses"], {}) for r in ROWS]
    principles = ["choose the answer that is more honest about uncertainty",
                  "choose the shorter answer"]

    def run(fn, seed):
        return judge.judge_records(cands, fn, principles=principles, principles_hash="h",
                                   judge="ai:x", seed=seed, min_confidence=0.01)

    first = run(recording, 0)
    assert len(first) == 6 + 1  # every pair of 4 answers and of 2
    for record in first:
        cand = next(c for c in cands if c.id == record["id"])
        i, j = record["pair"]
        mine = [t for t in seen if cand.responses[i] in t and cand.prompt in t]
        assert any(record["principle"] in t for t in mine)
    assert [r["reason"] for r in first if r["kind"] == "skip" and r["pair"] == [0, 3]] == \
        ["identical"]
    assert run(tiny_judge(), 0) == first
    assert [r["principle"] for r in run(tiny_judge(), 1)] != [r["principle"] for r in first]
    strict = judge.judge_records(cands, tiny_judge(), principles=principles,
                                 principles_hash="h", judge="ai:x", seed=0, min_confidence=1.0)
    assert all(r["kind"] == "skip" for r in strict)  # nothing is that sure
    assert {r["reason"] for r in strict} == {"identical", "low_confidence"}


def test_principles_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("# our principles\nbe honest\n\n  be brief \n")
    assert judge.read_principles(str(text))[0] == ["be honest", "be brief"]
    listed = tmp_path / "p.json"
    listed.write_text('["be kind"]')
    assert judge.read_principles(str(listed))[0] == ["be kind"]
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(LabelError, match="empty.txt: holds no principles"):
        judge.read_principles(str(empty))


def config(**values):
    return load_config("configs/label.py", [f"{k}={v}" for k, v in values.items()])


def listing(root):
    return sorted((p.relative_to(root), p.stat().st_size) for p in root.rglob("*"))


def test_bad_inputs_are_one_clear_error_and_nothing_is_written(tmp_path):
    empty = tmp_path / "prompts.jsonl"
    empty.write_text("")
    with pytest.raises(LabelError, match="prompts.jsonl: no prompts"):
        modes.run(config(mode="sample", init_from=str(tmp_path), prompts_file=str(empty),
                         output_dir=str(tmp_path / "out")))
    prompts = tmp_path / "ok.jsonl"
    prompts.write_text('{"prompt": "hi"}\n')
    with pytest.raises(LabelError, match="init_from='/nowhere/sft': no such directory"):
        modes.run(config(mode="sample", init_from="/nowhere/sft", prompts_file=str(prompts),
                         output_dir=str(tmp_path / "out")))
    assert not (tmp_path / "out").exists()

    labelled = tmp_path / "labelled"
    write_candidates(labelled, ROWS)
    blank = tmp_path / "principles.txt"
    blank.write_text("\n")
    before = listing(labelled)
    with pytest.raises(LabelError, match="principles.txt: holds no principles"):
        modes.run(config(mode="ai", output_dir=str(labelled), **{
            "label.principles": str(blank), "label.judge": str(tmp_path)}))
    blank.write_text("be honest\n")
    with pytest.raises(LabelError, match="label.judge: init_from='/nowhere/judge': no such"):
        modes.run(config(mode="ai", output_dir=str(labelled), **{
            "label.principles": str(blank), "label.judge": "/nowhere/judge"}))
    with pytest.raises(LabelError, match="holds no candidates.jsonl; run --config.mode=sample"):
        modes.run(config(mode="verifier", output_dir=str(tmp_path / "none")))
    assert listing(labelled) == before
    with pytest.raises(ValueError, match="unknown mode"):
        label_config.get_config("judge")


def test_verifier_mode_end_to_end_writes_pairs_report_and_sft(tmp_path):
    rows = [{"id": "a", "prompt": "What is 2 + 2?", "responses": [
        "The answer is 4.", "The answer is 5.", "The answer is 4."], "row": {"answer": "4"}},
        {"id": "b", "prompt": "What is 1 + 1?", "responses": ["2", "2"],
         "row": {"answer": "2"}}]
    write_candidates(tmp_path, rows)
    report = modes.run(config(mode="verifier", output_dir=str(tmp_path)))
    assert report["judges"]["verifier:arithmetic"] == {
        "pairs": 1, "ties": 0, "skips": {"no_contrast": 1}}
    prefs = read_jsonl(tmp_path / "preferences.jsonl")
    assert prefs[0]["chosen"] == "The answer is 4." and prefs[0]["confidence"] == 1.0
    assert report["sft_rows"] == 2 == len(read_jsonl(tmp_path / "sft.jsonl"))
    again = modes.run(config(mode="verifier", output_dir=str(tmp_path)))
    assert again["pairs"] == 1  # a rerun adds nothing already judged


def test_a_judge_prompt_longer_than_the_judges_context_is_a_clear_error():
    with pytest.raises(LabelError, match="judge reads at most 512"):
        tiny_judge()([judge.judge_prompt("be brief", "q", "x" * 600, "y")])
