"""Near-dedup recall/precision, executors and shard counts agree, splits, decontamination."""

import json
import os
import random

import numpy as np
import pytest

from configs.data import get_config
from llm.data import DataError, clean, dedup, gopher, split
from llm.data.executors import Executor
from llm.data.prepare import prepare
from llm.data.words import Doc

LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _vocab(rng, n=3000):
    return ["".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 8))) for _ in range(n)]


def _shingles(words, n=5):
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


def _planted(n_docs=600, n_dups=150, seed=0):
    """Random documents plus edited copies with known word 5-gram Jaccard to their original."""
    rng = random.Random(seed)
    vocab = _vocab(rng)
    docs = [[rng.choice(vocab) for _ in range(120)] for _ in range(n_docs)]
    pairs = []
    for _ in range(n_dups):
        i = rng.randrange(n_docs)
        w = list(docs[i])
        for _ in range(rng.randint(0, 6)):
            w[rng.randrange(len(w))] = rng.choice(vocab)
        a, b = _shingles(docs[i]), _shingles(w)
        pairs.append((i, len(docs), len(a & b) / len(a | b)))
        docs.append(w)
    return [" ".join(d) + "\n" for d in docs], pairs


def test_near_dedup_recall_and_precision():
    texts, planted = _planted()
    sig = dedup.signatures(texts, 128, 5)
    bands, rows = dedup.choose_banding(128, 0.8, 0.97)
    cand = dedup.candidate_pairs(sig, bands, rows)
    hashes, doc = dedup.shingle_hashes(texts, 5)
    sets = [hashes[doc == i] for i in range(len(texts))]
    found = {(a, b) for a, b in cand.tolist()
             if dedup.true_jaccard(sets[a], sets[b]) >= 0.8}
    truth = {(a, b) for a, b, j in planted if j >= 0.8}
    assert len(truth) > 50
    assert len(truth & found) / len(truth) >= 0.95  # recall
    true_j = {(a, b): j for a, b, j in planted}
    flagged = [p for p in found if p in true_j or dedup.true_jaccard(
        sets[p[0]], sets[p[1]]) >= 0.8]
    # Every verified pair really is at Jaccard >= 0.8 (by exact string shingles).
    for a, b in found:
        sa, sb = _shingles(texts[a].split()), _shingles(texts[b].split())
        assert len(sa & sb) / len(sa | sb) >= 0.8
    assert len(flagged) / max(1, len(found)) >= 0.95  # precision


def test_shingle_hash_jaccard_matches_strings():
    texts, planted = _planted(n_docs=20, n_dups=10, seed=2)
    hashes, doc = dedup.shingle_hashes(texts, 5)
    for a, b, j in planted:
        assert dedup.true_jaccard(hashes[doc == a], hashes[doc == b]) == pytest.approx(j)


def _awkward_texts():
    """Empty, blank, shorter-than-n, non-ASCII, mixed-case and every kind of whitespace."""
    rng = random.Random(3)
    alphabet = list("abcXYZ  \t\n\r\x0b\x0c\u00e9\u00fc\u20ac\u65e5\u672c") + ["word", "\u01c4"]
    return ["", " ", "a", "one two", "\n\n", "x y z w v u t s", "Caf\u00e9 CAF\u00c9 caf\u00e9"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 300))) for _ in range(200)]


@pytest.mark.parametrize("unit", ["word", "char"])
def test_compiled_and_numpy_hashes_are_identical(unit):
    pytest.importorskip("numba")
    texts, _ = _planted(n_docs=30, n_dups=10)
    texts += _awkward_texts()
    for ngram in (1, 2, 5, 13):
        fast = dedup.shingle_hashes(texts, ngram, unit)
        ref = dedup._shingle_hashes_numpy(texts, ngram, unit)
        assert all(np.array_equal(a, b) for a, b in zip(fast, ref, strict=True))
        for num_perm in (1, 7, 128):
            sig = dedup.signatures(texts, num_perm, ngram, unit)
            assert sig.dtype == np.uint32
            assert np.array_equal(sig, dedup._signatures_numpy(texts, num_perm, ngram, unit))
    assert (dedup.signatures([""], 16, 5) == dedup._EMPTY).all()


def test_pair_jaccard_matches_true_jaccard(monkeypatch):
    texts, planted = _planted(n_docs=40, n_dups=30, seed=4)
    texts += ["", "", "short"]
    hashes, doc = dedup.shingle_hashes(texts, 5)
    rng = np.random.default_rng(0)
    pairs = np.concatenate([np.array([(a, b) for a, b, _ in planted]),
                            rng.integers(0, len(texts), (50, 2)),
                            [[len(texts) - 3, len(texts) - 2], [0, len(texts) - 1]]])
    want = np.array([dedup.true_jaccard(hashes[doc == a], hashes[doc == b]) for a, b in pairs])
    assert np.array_equal(dedup.pair_jaccard(hashes, doc, pairs), want)
    assert want[len(planted)] < 0.1 and want[-2] == 1.0  # two empty documents are equal
    monkeypatch.setattr(dedup, "numba", None)  # the path taken without numba agrees
    assert np.array_equal(dedup.pair_jaccard(hashes, doc, pairs), want)


def test_components_keep_smallest_index():
    label = dedup.components(6, np.array([[4, 5], [2, 5], [1, 3]]))
    assert label.tolist() == [0, 1, 2, 1, 2, 2]


def _corpus(tmp_path):
    texts, planted = _planted(n_docs=80, n_dups=30, seed=1)
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "a.jsonl", "w") as f:
        for t in texts[:60]:
            f.write(json.dumps({"text": t}) + "\n")
    with open(raw / "b.jsonl", "w") as f:
        for t in texts[60:] + [texts[3], texts[70]]:  # exact duplicates, one within b
            f.write(json.dumps({"text": t}) + "\n")
    return raw


def _removed(raw, out, **kw):
    c = get_config()
    c.inputs, c.output_dir = str(raw), str(out)
    c.tokenizer.vocab_size, c.num_workers = 400, 0
    c.decontaminate.enabled = False
    for k, v in kw.items():
        setattr(c, k, v)
    out = prepare(c)
    return [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]


def test_shards_and_executors_agree(tmp_path):
    raw = _corpus(tmp_path)
    one = _removed(raw, tmp_path / "one", num_shards=1)
    four = _removed(raw, tmp_path / "four", num_shards=4)
    pool = _removed(raw, tmp_path / "pool", num_shards=4, num_workers=2)
    assert one == four == pool
    assert {r["stage"] for r in one} == {"dedup"}
    reasons = [r["filter"] for r in one]
    texts = [json.loads(x)["text"] for name in ("a.jsonl", "b.jsonl")
             for x in (raw / name).read_text().splitlines()]
    assert reasons.count("exact_duplicate") == len(texts) - len(set(texts))  # all, always
    assert reasons.count("near_duplicate") >= 5
    exact = [r for r in one if r["filter"] == "exact_duplicate"]
    assert {"source": str(raw / "a.jsonl"), "line": 4} in [r["duplicate_of"] for r in exact]


def test_local_executor_keeps_one_pool_for_all_stages():
    with Executor("local", 2) as ex:
        first = ex.run(os.getpid, [()] * 4)
        second = ex.run(os.getpid, [()] * 4)
    assert os.getpid() not in first
    assert len(set(first) | set(second)) <= 2  # the same two workers served both stages
    with pytest.raises(DataError, match="unknown executor"):
        Executor("dask", 2)


@pytest.mark.slow
def test_ray_executor_agrees(tmp_path):
    pytest.importorskip("ray")
    raw = _corpus(tmp_path)
    local = _removed(raw, tmp_path / "local", num_shards=3)
    ray_run = _removed(raw, tmp_path / "ray", num_shards=3, executor="ray", num_workers=2)
    assert local == ray_run


def test_split_is_stable_under_reordering_and_reruns(tmp_path):
    keys = [f"document number {i}" for i in range(2000)]
    a = {k: split.split_of(k, 0.1, 0.05) for k in keys}
    b = {k: split.split_of(k, 0.1, 0.05) for k in reversed(keys)}
    assert a == b
    counts = {s: list(a.values()).count(s) for s in split.SPLITS}
    assert 120 < counts["validation"] < 280 and 50 < counts["test"] < 160
    raw = _corpus(tmp_path)
    runs = []
    for name, shards in (("x", 1), ("y", 3)):
        c = get_config()
        c.inputs, c.output_dir, c.num_shards, c.num_workers = str(raw), str(tmp_path / name), \
            shards, 0
        c.tokenizer.vocab_size, c.split.validation = 400, 0.3
        out = prepare(c)
        runs.append(json.loads((out / "meta.json").read_text())["splits"])
    assert runs[0] == {k: {s: dict(v, shards=runs[0][k][s]["shards"]) for s, v in st.items()}
                       for k, st in runs[1].items()}


def test_decontamination_removes_13gram_overlap(tmp_path):
    rng = random.Random(5)
    vocab = _vocab(rng)
    test_doc = " ".join(rng.choice(vocab) for _ in range(80))
    leaked = " ".join(rng.choice(vocab) for _ in range(40)) + " " + " ".join(
        test_doc.split()[10:23]) + " " + " ".join(rng.choice(vocab) for _ in range(40))
    near_miss = " ".join(rng.choice(vocab) for _ in range(40)) + " " + " ".join(
        test_doc.split()[10:22]) + " " + " ".join(rng.choice(vocab) for _ in range(40))
    (tmp_path / "eval.jsonl").write_text(json.dumps({"text": test_doc}) + "\n")
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in [
        leaked, near_miss] + [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(5)]))
    c = get_config()
    c.inputs, c.output_dir, c.num_workers = str(tmp_path / "train.jsonl"), str(tmp_path / "o"), 0
    c.tokenizer.vocab_size, c.split.validation = 300, 0.0
    c.decontaminate.eval_files = str(tmp_path / "eval.jsonl")
    out = prepare(c)
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["stage"], r["filter"]) for r in removed] == [
        (1, "decontaminate", "contamination")]
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"decontaminate": {"contamination": 1}}


def test_quality_filters_each_fire():
    f = get_config().clean.filters
    good = " ".join(f"word{i % 50}x token" for i in range(60)) + ".\n"
    assert clean.quality_problem("alpha beta gamma delta epsilon zeta eta theta.", f) is None
    assert clean.quality_problem("too short", f) == "min_words"
    assert clean.quality_problem("1234 5678 9123 4567 8912 3456", f) == "digit_ratio"
    assert clean.quality_problem("#### alpha beta #### gamma # delta # eta", f) == "hash_ratio"
    assert clean.quality_problem("same line here\n" * 20, f) == "duplicate_line_chars"
    f.enabled = "min_words"
    assert clean.quality_problem("same line here\n" * 20, f) is None
    assert clean.quality_problem(good, get_config().clean.filters) in (None, "top_2gram")
    assert gopher.digit_ratio(Doc("a1\u00b2\u0663 42")) == 5 / 7  # str.isdigit, ASCII or not
    cfg = get_config().clean
    assert clean.normalize("a\u0000b  \r\n\n\n\n\nc\u0301", cfg) == "ab\n\n\n\u0107\n"
    with pytest.raises(ValueError, match="unknown filter"):
        clean.check_filter_names("min_word")


def test_held_out_ngrams_do_not_depend_on_the_hashing_batch(tmp_path, monkeypatch):
    from llm.data import stages

    rng = random.Random(11)
    vocab = _vocab(rng)
    words = lambda n: [rng.choice(vocab) for _ in range(n)]
    docs = []
    for _ in range(30):  # pairs sharing a 13-gram: whichever lands held out taints the other
        a = words(60)
        docs += [" ".join(a), " ".join(words(20) + a[10:23] + words(20))]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))

    def removed(batch):
        monkeypatch.setattr(stages, "BATCH", batch)
        c = get_config()
        c.inputs, c.output_dir = str(tmp_path / "in.jsonl"), str(tmp_path / f"o{batch}")
        c.num_workers, c.tokenizer.vocab_size = 0, 300
        c.split.validation, c.split.test = 0.3, 0.2
        out = prepare(c)
        return (out / "removed.jsonl").read_text()

    one_at_a_time = removed(1)
    assert '"contamination"' in one_at_a_time
    assert one_at_a_time == removed(512)
