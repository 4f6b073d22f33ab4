"""Benchmark: quality filters (`:web`) vs datatrove's Gopher + C4 filters; pipeline docs/s.

    python scripts/bench_filters.py --num_docs=5000
    python scripts/bench_filters.py --num_docs=5000 --ab_tree=/tmp/old  # `:code` A/B

The corpus is scripts/bench_data.py's (300-word documents, 10% near duplicates) made into
prose: every word has a 30% chance of being a stop word, sentences of 8-16 words end in '.',
lines hold 1-3 sentences. Timed, on the same documents in one process: our `:web` filters
(normalise + clean_text) and datatrove's GopherRepetitionFilter, GopherQualityFilter and
C4QualityFilter (its spaCy word splitter), then our whole `prepare()` with `:web`. With
`--ab_tree` (an unpacked older checkout), `prepare()` with `:code` alternates between this
tree and that one, `--rounds` times each. Prints a table; the last line is one JSON object.
"""

import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from bench_data import _N, _WORKERS, corpus  # noqa: E402  (its --num_docs and --workers)

_PEER_DOCS = flags.DEFINE_integer("peer_docs", 1000, "documents datatrove's filters see",
                                  lower_bound=1)
_AB = flags.DEFINE_string("ab_tree", "", "an older checkout to A/B the `:code` pipeline with")
_ROUNDS = flags.DEFINE_integer("rounds", 3, "A/B rounds (each runs both trees once)",
                               lower_bound=1)

STOP = ("the", "be", "to", "of", "and", "that", "have", "with")


def prose(texts: list[str], seed: int = 0) -> list[str]:
    """Each text with stop words, sentence ends and line breaks, so web filters keep most."""
    rng = random.Random(seed)
    out = []
    for text in texts:
        words = [rng.choice(STOP) if rng.random() < 0.3 else w for w in text.split()]
        lines, sentence, line = [], [], []
        target = rng.randint(8, 16)
        for w in words:
            sentence.append(w)
            if len(sentence) == target:
                line.append(" ".join(sentence).capitalize() + ".")
                sentence, target = [], rng.randint(8, 16)
                if rng.random() < 0.4:
                    lines.append(" ".join(line))
                    line = []
        if sentence:
            line.append(" ".join(sentence).capitalize() + ".")
        lines.append(" ".join(line))
        out.append("\n".join(ln for ln in lines if ln))
    return out


def ours_filters(texts: list[str]) -> tuple[float, int]:
    """(seconds, documents kept) for normalize + clean_text with `:web`, one process."""
    from configs.data import get_config
    from llm.data import clean

    c = get_config("web").clean
    t = time.perf_counter()
    kept = sum(clean.clean_text(clean.normalize(s, c), c.filters)[1] is None for s in texts)
    return time.perf_counter() - t, kept


def datatrove_filters(texts: list[str]) -> tuple[float, int]:
    """(seconds, documents kept) for datatrove's Gopher repetition + quality and C4 filters."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    chain = (GopherRepetitionFilter(), GopherQualityFilter(), C4QualityFilter())
    chain[1].filter(Document(text="warm up the word splitter " * 20, id="w"))
    t = time.perf_counter()
    kept = 0
    for i, s in enumerate(texts):
        doc = Document(text=s, id=str(i))
        kept += all(f.filter(doc) is True for f in chain)
    return time.perf_counter() - t, kept


_PIPELINE = """
import json, sys, time
from configs.data import get_config
from llm.data.prepare import prepare
c = get_config(sys.argv[3] or None)
c.inputs, c.output_dir, c.num_workers = sys.argv[1], sys.argv[2], int(sys.argv[4])
c.tokenizer.max_sentences = 20_000
t = time.perf_counter()
prepare(c)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def pipeline(tree: str, raw: pathlib.Path, out: pathlib.Path, preset: str) -> float:
    """Seconds for prepare() of `raw`, run from the checkout `tree` in a fresh process."""
    env = dict(os.environ, PYTHONPATH=tree)
    done = subprocess.run([sys.executable, "-c", _PIPELINE, str(raw), str(out), preset,
                           str(_WORKERS.value)], env=env, cwd=tree, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])["seconds"]


def main(argv):
    """Run every measurement and print the table and the JSON line."""
    del argv
    texts = prose(corpus(_N.value, 300)[0])
    n = len(texts)
    res = {"num_docs": n, "load_start": os.getloadavg()[0]}
    secs, kept = ours_filters(texts)
    res.update(ours_filter_docs_per_s=n / secs, ours_kept=kept / n)
    peer = texts[:_PEER_DOCS.value]
    secs, kept = datatrove_filters(peer)
    res.update(datatrove_filter_docs_per_s=len(peer) / secs, datatrove_kept=kept / len(peer))
    secs, kept = ours_filters(peer)
    res["ours_kept_same_docs"] = kept / len(peer)
    res["filter_speedup"] = res["ours_filter_docs_per_s"] / res["datatrove_filter_docs_per_s"]
    here = str(pathlib.Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory() as tmp:
        raw = pathlib.Path(tmp) / "raw.jsonl"
        raw.write_text("".join(json.dumps({"text": s}) + "\n" for s in texts))
        res["pipeline_web_docs_per_s"] = n / pipeline(here, raw, pathlib.Path(tmp) / "w", "web")
        if _AB.value:
            plain = pathlib.Path(tmp) / "plain.jsonl"  # bench_data.py's own documents
            plain.write_text("".join(json.dumps({"text": s}) + "\n"
                                     for s in corpus(_N.value, 300)[0]))
            rounds = {"this": [], "before": []}
            for r in range(_ROUNDS.value):
                for name, tree in (("this", here), ("before", _AB.value)):
                    out = pathlib.Path(tmp) / f"{name}{r}"
                    rounds[name].append(n / pipeline(tree, plain, out, ""))
            res["code_pipeline_docs_per_s"] = rounds["this"]
            res["code_pipeline_before_docs_per_s"] = rounds["before"]
            res["code_ratio_median"] = sorted(a / b for a, b in zip(
                rounds["this"], rounds["before"], strict=True))[_ROUNDS.value // 2]
    res["load_end"] = os.getloadavg()[0]
    print(f"{'measure':<34}{'value':>14}")
    for k, v in res.items():
        shown = [round(x) for x in v] if isinstance(v, list) else (
            f"{v:.3f}" if isinstance(v, float) else v)
        print(f"{k:<34}{shown!s:>14}")
    print(json.dumps(res))


if __name__ == "__main__":
    app.run(main)
