"""The labelling log, preferences.jsonl as the loader reads it, candidates, verifiers and
agreement."""

from __future__ import annotations

import json

import pytest
from label_helpers import ByteTokenizer, read_jsonl, tiny_model, write_candidates

from llm.data import sources
from llm.label import agreement, candidates, scorers
from llm.label.store import LabelError, Store, ranking_pairs

ROWS = [{"id": "p1", "prompt": "Say hi", "responses": ["hi", "hello", "hey"]},
        {"id": "p2", "prompt": "Say bye", "responses": ["bye", "ciao", "later"]},
        {"id": "p3", "prompt": "Count", "responses": ["1 2", "1 2 3", "one"]}]


def test_ranking_pairs_orders_the_ranked_above_the_rest():
    assert ranking_pairs([2, 0, 1], 3) == [(2, 0), (2, 1), (0, 1)]
    assert ranking_pairs([1], 3) == [(1, 0), (1, 2)]  # best only: no pair among the rest


def test_log_rebuilds_preferences_that_the_loader_reads_ties_and_skips_counted(tmp_path):
    write_candidates(tmp_path, ROWS)
    store = Store(tmp_path)
    store.append([{"judge": "human:ann", "id": "p1", "kind": "rank", "ranking": [1, 0, 2]}])
    store.append([{"judge": "human:ann", "id": "p2", "kind": "tie"}])
    store.append([{"judge": "human:ann", "id": "p3", "kind": "skip"}])
    wrong = store.append([{"judge": "human:ann", "id": "p3", "kind": "rank", "ranking": [2]}])
    store.append([{"judge": "human:ann", "id": "p3", "kind": "undo", "undoes": wrong[0]["seq"]}])
    rows = read_jsonl(tmp_path / "preferences.jsonl")
    pairs = [(r["chosen"], r["rejected"]) for r in rows if "chosen" in r]
    assert pairs == [("hello", "hi"), ("hello", "hey"), ("hi", "hey")]
    assert [r.get("outcome") for r in rows if "chosen" not in r] == ["tie", "skip"]
    assert all(r["judge"] == "human:ann" for r in rows)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["judges"]["human:ann"] == {"pairs": 3, "ties": 1, "skips": {"skipped": 1}}
    assert report["undone"] == 1
    # The log is append-only: the undone ranking is still there, marked by its undo.
    assert [r["kind"] for r in read_jsonl(tmp_path / "judgements.jsonl")] == \
        ["rank", "tie", "skip", "rank", "undo"]

    stats = sources.ReadStats()
    records = list(sources.read_records(tmp_path / "preferences.jsonl", stats=stats))
    assert [(r.kind, r.fields["chosen"]) for r in records] == \
        [("preference", "hello"), ("preference", "hello"), ("preference", "hi")]
    assert stats.bad == {"preference_tie": 1, "preference_skip": 1}

    again = Store(tmp_path)  # a restart reads the same state back
    assert again.active() == store.active()


def test_a_torn_last_log_line_is_dropped_on_restart(tmp_path):
    write_candidates(tmp_path, ROWS)
    Store(tmp_path).append([{"judge": "human:ann", "id": "p1", "kind": "tie"}])
    with open(tmp_path / "judgements.jsonl", "a") as f:
        f.write('{"seq": 2, "judge": "hu')
    store = Store(tmp_path)
    assert len(store.records) == 1
    store.append([{"judge": "human:ann", "id": "p2", "kind": "tie"}])
    assert [r["seq"] for r in read_jsonl(tmp_path / "judgements.jsonl")] == [1, 2]


def fake_complete(requests, seeds):
    return [f"{r['messages'][0]['content']}#{s % 1000}" for r, s in zip(requests, seeds,
                                                                        strict=True)]


def test_sample_is_resumable_and_seeded_by_prompt_and_k(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{n}", "answer": n}) + "\n"
                               for n in range(5)))
    rows = candidates.read_prompts(str(prompts))
    whole = tmp_path / "whole"
    whole.mkdir()
    candidates.sample_candidates(fake_complete, rows, whole, num_responses=3, batch_size=2,
                                 seed=7)
    cut = tmp_path / "cut"
    cut.mkdir()
    candidates.sample_candidates(fake_complete, rows[:3], cut, num_responses=3, batch_size=2,
                                 seed=7)
    text = (cut / "candidates.jsonl").read_text()
    (cut / "candidates.jsonl").write_text(text[:len(text) - 10])  # killed mid-line
    counts = candidates.sample_candidates(fake_complete, rows, cut, num_responses=3,
                                          batch_size=2, seed=7)
    assert (cut / "candidates.jsonl").read_text() == (whole / "candidates.jsonl").read_text()
    assert counts == {"prompts": 5, "written": 3, "already_done": 2}
    got = read_jsonl(whole / "candidates.jsonl")
    assert got[0]["row"] == {"answer": 0} and len(set(got[0]["responses"])) == 3


def test_real_sampler_candidates_then_verifier_pairs_and_sft(tmp_path):
    from llm.sampling.sampler import Sampler

    graphdef, params = tiny_model()
    sampler = Sampler(graphdef, params, ByteTokenizer(), max_len=128)
    complete = candidates.sampler_completer(sampler, temperature=1.0, top_p=1.0,
                                            max_new_tokens=4)
    # A stand-in check random bytes pass about half the time: the first byte is ASCII.
    rows = [{"id": str(n), "prompt": f"q{n}", "pattern": "^[\\x00-\\x7f]"} for n in range(4)]
    candidates.sample_candidates(complete, rows, tmp_path, num_responses=4, batch_size=2,
                                 seed=1)
    store = Store(tmp_path)
    scores = scorers.score_candidates(store.candidates, scorers.verifier_scorer("regex"))
    flat = [s for found in scores for s in found]
    assert set(flat) == {0.0, 1.0}  # both sides occur
    store.append(scorers.pair_records(store.candidates, scores, judge="verifier:regex",
                                      exact=True))
    prefs = [r for r in read_jsonl(tmp_path / "preferences.jsonl") if "chosen" in r]
    assert prefs and all(r["chosen"][0].isascii() and not r["rejected"][0].isascii()
                         for r in prefs if r["chosen"] and r["rejected"])
    for cand, found in zip(store.candidates, scores, strict=True):
        right = {t for t, s in zip(cand.responses, found, strict=True) if s}
        wrong = {t for t, s in zip(cand.responses, found, strict=True) if not s}
        mine = [(r["chosen"], r["rejected"]) for r in prefs if r["id"] == cand.id]
        assert len(mine) == len(right) * len(wrong)
    n = scorers.write_sft(store.candidates, scores, tmp_path / "sft.jsonl", 1.0)
    sft = read_jsonl(tmp_path / "sft.jsonl")
    assert n == len(sft) and all(m["messages"][1]["content"][:1].isascii() for m in sft)
    # Rerunning the sampler writes nothing new (everything is there).
    assert candidates.sample_candidates(complete, rows, tmp_path, num_responses=4,
                                        batch_size=2, seed=1)["written"] == 0


def test_reward_mode_ranks_by_a_stand_in_score_with_sigmoid_confidence(tmp_path):
    write_candidates(tmp_path, ROWS[:1])
    store = Store(tmp_path)

    def length_score(prompts, completions, **fields):
        return [float(len(c)) for c in completions]  # stands in for a reward model

    scores = scorers.score_candidates(store.candidates, length_score)
    records = scorers.pair_records(store.candidates, scores, judge="reward:abc", exact=False)
    got = {(r["chosen"], r["rejected"]): r["confidence"] for r in records}
    # hi=2, hello=5, hey=3: every pair ordered by length; confidence = |2 sigmoid(margin) - 1|
    assert set(got) == {(1, 0), (1, 2), (2, 0)}
    assert got[(1, 0)] == pytest.approx(0.905148, abs=1e-6)  # tanh(3 / 2)
    assert got[(2, 0)] == pytest.approx(0.462117, abs=1e-6)  # tanh(1 / 2)
    with pytest.raises(LabelError, match="label.reward_model='rm_dir'"):
        scorers.reward_scorer("rm_dir")
    with pytest.raises(LabelError, match="unknown reward"):
        scorers.verifier_scorer("arithmetik")


def test_agreement_and_kappa_against_hand_computed_values(tmp_path):
    rows = [{"id": f"p{n}", "prompt": f"q{n}", "responses": ["a", "b"]} for n in range(4)]
    write_candidates(tmp_path, rows)
    store = Store(tmp_path)
    human = [0, 0, 1, 1]  # the index each judge preferred, per prompt
    ai = [0, 1, 1, 1]
    for n, (h, a) in enumerate(zip(human, ai, strict=True)):
        store.append([{"judge": "human:ann", "id": f"p{n}", "kind": "rank", "ranking": [h]},
                      {"judge": "ai:j", "id": f"p{n}", "kind": "pair", "chosen": a,
                       "rejected": 1 - a, "principle": "honest" if n < 2 else "brief"}])
    table = {r["principle"]: r for r in agreement.agreement_rows(store)}
    # all: p_o = 3/4; ann prefers the first 1/2, the judge 1/4: p_e = 1/2*1/4 + 1/2*3/4 = 1/2
    assert table["all"]["agreement"] == 0.75 and table["all"]["kappa"] == 0.5
    assert table["honest"]["pairs"] == 2 and table["honest"]["agreement"] == 0.5
    assert table["brief"]["kappa"] is None  # both always chose the second: chance is 1
    assert "kappa" in agreement.format_table(list(table.values()))


def test_bad_prompts_files_name_the_file_and_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(LabelError, match="empty.jsonl: no prompts"):
        candidates.read_prompts(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    with pytest.raises(LabelError, match="bad.jsonl line 2: expected a non-empty 'prompt'"):
        candidates.read_prompts(str(bad))
    dup = tmp_path / "dup.jsonl"
    dup.write_text('{"prompt": "a"}\n{"prompt": "a"}\n')
    with pytest.raises(LabelError, match="line 2: prompt id .* repeats line 1"):
        candidates.read_prompts(str(dup))


def test_a_preferences_file_this_tool_did_not_write_is_never_overwritten(tmp_path):
    write_candidates(tmp_path, ROWS)
    (tmp_path / "preferences.jsonl").write_text('{"prompt": "mine"}\n')
    with pytest.raises(LabelError, match="preferences.jsonl exists but judgements.jsonl"):
        Store(tmp_path)
    assert (tmp_path / "preferences.jsonl").read_text() == '{"prompt": "mine"}\n'


def test_a_ranking_over_repeated_answers_makes_no_pair_of_a_text_with_itself(tmp_path):
    write_candidates(tmp_path, [{"id": "p", "prompt": "q", "responses": ["a", "b", "a"]}])
    store = Store(tmp_path)
    store.append([{"judge": "human:ann", "id": "p", "kind": "rank", "ranking": [0, 2, 1]}])
    rows = read_jsonl(tmp_path / "preferences.jsonl")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "b"), ("a", "b")]
