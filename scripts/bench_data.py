"""Benchmark: near-dedup and whole-pipeline documents/s vs datasketch (and rensa), tokenizer MB/s.

    python scripts/bench_data.py --num_docs=50000

Prints a table; the last line is one JSON object with the figures.
"""

import json
import multiprocessing
import pathlib
import random
import tempfile
import time

import numpy as np
from absl import app, flags

from llm.data import dedup

_N = flags.DEFINE_integer("num_docs", 50_000, "documents in the generated corpus")
_WORDS = flags.DEFINE_integer("words", 300, "words per document")
_PIPELINE = flags.DEFINE_bool("pipeline", True, "also time the whole prepare() pipeline")
_WORKERS = flags.DEFINE_integer("workers", 2, "processes for our signatures / the pipeline")


def corpus(n: int, words: int, seed: int = 0):
    """n documents, 10% of them edited copies with word 5-gram Jaccard 0.6-1.0 to an original."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    vocab = ["".join(rng.choice(letters, k)) for k in rng.integers(3, 9, 20_000)]
    vocab = np.array(vocab)
    n_orig = n - n // 10
    docs = [list(vocab[rng.integers(0, len(vocab), words)]) for _ in range(n_orig)]
    pairs = []
    r = random.Random(seed)
    while len(docs) < n:
        i = r.randrange(n_orig)
        w = list(docs[i])
        edits = r.randint(0, words // 40)  # ~0.6..1.0 Jaccard for 5-grams
        for _ in range(edits):
            w[r.randrange(words)] = str(vocab[r.randrange(len(vocab))])
        a = {tuple(docs[i][k:k + 5]) for k in range(words - 4)}
        b = {tuple(w[k:k + 5]) for k in range(words - 4)}
        pairs.append((i, len(docs), len(a & b) / len(a | b)))
        docs.append(w)
    return [" ".join(d) for d in docs], pairs


_TEXTS: list[str] = []  # the corpus, inherited by forked workers (as if each read its shard)


def _sig_chunk(span):
    return dedup.signatures(_TEXTS[span[0]:span[1]], 128, 5)


def ours(texts, workers):
    """Our near-dedup: parallel signatures, banding, true-Jaccard verification."""
    t = time.perf_counter()
    _TEXTS[:] = texts
    spans = [(i, i + 2000) for i in range(0, len(texts), 2000)]
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            sig = np.concatenate(pool.map(_sig_chunk, spans))
    else:
        sig = np.concatenate([_sig_chunk(c) for c in spans])
    bands, rows = dedup.choose_banding(128, 0.8, 0.97)
    cand = dedup.candidate_pairs(sig, bands, rows)
    need = np.unique(cand)
    h, d = dedup.shingle_hashes([texts[i] for i in need], 5)
    good = dedup.pair_jaccard(h, d, np.searchsorted(need, cand)) >= 0.8
    found = {(a, b) for a, b in cand[good].tolist()}
    return time.perf_counter() - t, found


def compile_kernels() -> float:
    """Seconds to compile (or load from numba's on-disk cache) the signature kernels."""
    t = time.perf_counter()
    dedup.pair_jaccard(*dedup.shingle_hashes(["a b c d e f"], 5), np.array([[0, 0]]))
    dedup.signatures(["a b c d e f"], 128, 5)
    return time.perf_counter() - t


def datasketch_run(texts):
    """datasketch MinHash (update_batch) + MinHashLSH at the same settings."""
    from datasketch import MinHash, MinHashLSH

    t = time.perf_counter()
    lsh = MinHashLSH(threshold=0.8, num_perm=128)
    found = set()
    for i, text in enumerate(texts):
        w = text.split()
        m = MinHash(num_perm=128)
        m.update_batch([" ".join(w[k:k + 5]).encode() for k in range(len(w) - 4)])
        for j in lsh.query(m):
            found.add((j, i))
        lsh.insert(i, m)
    return time.perf_counter() - t, found


def rensa_run(texts):
    """rensa RMinHash + RMinHashLSH, if it installs."""
    try:
        from rensa import RMinHash, RMinHashLSH
    except ImportError:
        return None, set()
    t = time.perf_counter()
    lsh = RMinHashLSH(threshold=0.8, num_perm=128, num_bands=16)
    found = set()
    for i, text in enumerate(texts):
        w = text.split()
        m = RMinHash(num_perm=128, seed=0)
        m.update([" ".join(w[k:k + 5]) for k in range(len(w) - 4)])
        for j in lsh.query(m):
            found.add((j, i))
        lsh.insert(i, m)
    return time.perf_counter() - t, found


def recall(found, pairs):
    """Fraction of planted pairs with Jaccard >= 0.8 that were found."""
    truth = [(a, b) for a, b, j in pairs if j >= 0.8]
    return sum((a, b) in found for a, b in truth) / max(1, len(truth))


def precision(found, texts):
    """Fraction of reported pairs whose word 5-gram Jaccard (by strings) is >= 0.8."""
    def grams(text):
        w = text.split()
        return {tuple(w[k:k + 5]) for k in range(len(w) - 4)}

    ok = sum(len(grams(texts[a]) & grams(texts[b])) / len(grams(texts[a]) | grams(texts[b]))
             >= 0.8 for a, b in found)
    return ok / max(1, len(found))


def main(argv):
    """Run every measurement and print the table and the JSON line."""
    del argv
    texts, pairs = corpus(_N.value, _WORDS.value)
    n = len(texts)
    res = {"num_docs": n, "planted": len(pairs)}
    # Compiled once before timing (and before the worker processes fork, so they share it);
    # the one-off cost is reported, not hidden.
    res["numba"] = dedup.numba is not None
    res["compile_s"] = compile_kernels()
    secs, found = ours(texts, _WORKERS.value)
    res.update(ours_docs_per_s=n / secs, ours_recall=recall(found, pairs),
               ours_precision=precision(found, texts))
    if _WORKERS.value > 1:
        secs, _ = ours(texts, 1)
        res["ours_1proc_docs_per_s"] = n / secs
    secs, found = datasketch_run(texts)
    res.update(datasketch_docs_per_s=n / secs, datasketch_recall=recall(found, pairs),
               datasketch_precision=precision(found, texts))
    secs, found = rensa_run(texts)
    if secs is not None:
        res.update(rensa_docs_per_s=n / secs, rensa_recall=recall(found, pairs),
                   rensa_precision=precision(found, texts))
    res["speedup_vs_datasketch"] = res["ours_docs_per_s"] / res["datasketch_docs_per_s"]
    from llm.data.tokenizer import train_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        tok = train_tokenizer(texts[:2000], pathlib.Path(tmp) / "tok", 4096)
        sample = texts[:5000]
        t = time.perf_counter()
        tok.encode_batch(sample)
        res["tokenize_mb_per_s"] = sum(len(s) for s in sample) / 1e6 / (time.perf_counter() - t)
        if _PIPELINE.value:
            from configs.data import get_config
            from llm.data.prepare import prepare

            raw = pathlib.Path(tmp) / "raw.jsonl"
            raw.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts))
            c = get_config()
            c.inputs, c.output_dir = str(raw), str(pathlib.Path(tmp) / "out")
            c.num_workers = _WORKERS.value
            c.tokenizer.max_sentences = 20_000
            t = time.perf_counter()
            prepare(c)
            res["pipeline_docs_per_s"] = n / (time.perf_counter() - t)
    print(f"{'measure':<28}{'value':>14}")
    for k, v in res.items():
        print(f"{k:<28}{v:>14.3f}" if isinstance(v, float) else f"{k:<28}{v!s:>14}")
    print(json.dumps(res))


if __name__ == "__main__":
    app.run(main)
