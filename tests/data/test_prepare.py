"""prepare(): formats, clear errors naming file and line, rerun and overwrite rules."""

import gzip
import json
import os
import pathlib
from collections import Counter

import numpy as np
import pytest

from configs.data import get_config
from llm.data import DataError, loaders
from llm.data.prepare import is_prepared, prepare
from llm.data.records import RecordSet
from llm.data.tokenizer import Tokenizer

WORDS = ["".join("abcdefghijklmnopqrstuvwxyz"[(i * 7 + k * 3) % 26] for k in range(2 + i % 6))
         + "abcdefghijklmnopqrstuvwxyz"[i % 26] for i in range(400)]


def _doc(seed, n=60):
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n)) + ".\n"


def _config(inputs, out, **kw):
    c = get_config()
    c.inputs, c.output_dir = str(inputs), str(out)
    c.num_workers = 0
    c.tokenizer.vocab_size = 450
    c.split.validation = 0.0
    for k, v in kw.items():
        node = c
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return c


@pytest.fixture
def corpus(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    for i in range(8):
        (d / f"doc{i}.txt").write_text(_doc(i))
    with open(d / "more.jsonl", "w") as f:
        for i in range(8, 14):
            f.write(json.dumps({"text": _doc(i), "id": i}) + "\n")
    with gzip.open(d / "packed.jsonl.gz", "wt") as f:
        f.write(json.dumps({"text": _doc(20)}) + "\n")
    return d


def _snapshot(d):
    return {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(d.rglob("*"))}


def test_prepares_text_jsonl_gzip_and_reruns(corpus, tmp_path):
    before = _snapshot(corpus)
    out = prepare(_config(corpus, tmp_path / "out"))
    assert is_prepared(out) and not is_prepared(corpus)
    assert _snapshot(corpus) == before  # inputs are never modified
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["train"]["text"]["documents"] == 15 and meta["dtype"] == "uint16"
    report = json.loads((out / "report.json").read_text())
    assert report["stages"][0]["documents_out"] == 15
    batch = next(iter(loaders.pretrain_loader(out, "train", 32, 2, 0, 1)))
    assert batch["tokens"].shape == (2, 32)
    # Same inputs and settings: finished work is reused, nothing rewritten.
    stamp = (out / "meta.json").stat().st_mtime_ns
    assert prepare(_config(corpus, tmp_path / "out", num_workers=2)) == out
    assert (out / "meta.json").stat().st_mtime_ns == stamp


def test_existing_output_is_never_silently_overwritten(corpus, tmp_path):
    out = tmp_path / "out"
    prepare(_config(corpus, out))
    with pytest.raises(DataError, match="overwrite"):
        prepare(_config(corpus, out, **{"dedup.threshold": 0.7}))
    prepare(_config(corpus, out, overwrite=True, **{"dedup.threshold": 0.7}))
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare(_config(corpus, other, overwrite=True))
    assert (other / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("content,match,line", [
    (b'{"text": "fine words here and more"}\n{"text": broken\n', "malformed json", 2),
    (b'{"text": "fine words here and more"}\n\n{"body": "x"}\n', "no known field", 3),
    (b'{"text": "ok ok ok ok ok"}\n{"text": "\xff\xfe bad"}\n', "non utf8", 2),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "unknown role", 1),
    (b'{"prompt": "p", "chosen": 3, "rejected": "r"}\n', "'chosen'", 1),
    (b'{"text": "fine words here and more"}\n{"prompt": "p", "rejected": "r"}\n',
     "missing field 'chosen'", 2),
    (b'{"messages": "hello"}\n', "'messages' must be a non-empty list", 1),
    (b'{"messages": [{"role": "user"}]}\n', "needs 'role' and 'content'", 1),
    (b'{"text": "fine words here and more"}\n{"text": "a \\ud800 b"}\n',
     "unpaired surrogate", 2),
])
def test_bad_records_name_file_and_line(tmp_path, content, match, line):
    src = tmp_path / "bad.jsonl"
    src.write_bytes(content)
    with pytest.raises(DataError, match=match) as e:
        prepare(_config(src, tmp_path / "out"))
    assert f"{src}:{line}:" in str(e.value)


BAD_LINES = [  # (raw JSONL line, the reason it is skipped)
    (b"{oops", "malformed_json"),
    (b'{"other": 1}', "missing_field"),  # no text field (nor any other known one)
    (b'{"text": "\xff"}', "non_utf8"),  # raw bytes that are not UTF-8
    (b'{"text": "lone \\ud800 surrogate"}', "non_utf8"),  # an escape that is not UTF-8
    (b'{"prompt": "p", "rejected": "r"}', "missing_field"),  # preference without 'chosen'
    (b'{"messages": "hello"}', "bad_field"),
    (b'{"messages": [{"role": "user"}]}', "missing_field"),
    (b'{"text": 5}', "bad_field"),
]


@pytest.mark.parametrize("shards", [1, 4])
def test_skip_bad_records_counts_them(tmp_path, shards):
    src = tmp_path / "mixed.jsonl"
    good = [json.dumps({"text": _doc(i)}).encode() for i in range(6)]
    lines = good[:3] + [raw for raw, _ in BAD_LINES] + good[3:]
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = prepare(_config(src, tmp_path / "out", skip_bad_records=True, num_shards=shards))
    report = json.loads((out / "report.json").read_text())
    expected: dict = {}
    for _, reason in BAD_LINES:
        expected[reason] = expected.get(reason, 0) + 1
    assert report["bad_records"] == expected
    assert report["stages"][0]["documents_in"] == 6 + len(BAD_LINES)
    assert report["stages"][0]["documents_out"] == 6
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert [(r["line"], r["stage"], r["filter"]) for r in removed] == [
        (4 + i, "read", reason) for i, (_, reason) in enumerate(BAD_LINES)]
    assert json.loads((out / "meta.json").read_text())["splits"]["train"]["text"][
        "documents"] == 6


def test_skip_bad_records_in_text_and_parquet_files(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "good.txt").write_text(_doc(1))
    (raw / "latin.txt").write_bytes(b"caf\xe9 " + _doc(2).encode())
    body = [_doc(3).encode(), b"\xff\xfe not utf-8", None, _doc(4).encode()]
    pq.write_table(pa.table({"text": pa.array(body, pa.binary())}), raw / "rows.parquet")
    with pytest.raises(DataError, match=r"latin.txt:1: invalid utf-8"):
        prepare(_config(raw, tmp_path / "strict"))
    out = prepare(_config(raw, tmp_path / "out", skip_bad_records=True))
    report = json.loads((out / "report.json").read_text())
    assert report["bad_records"] == {"non_utf8": 2, "missing_field": 1}
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert [(pathlib.Path(r["source"]).name, r["line"], r["stage"], r["filter"])
            for r in removed] == [
        ("latin.txt", 1, "read", "non_utf8"), ("rows.parquet", 2, "read", "non_utf8"),
        ("rows.parquet", 3, "read", "missing_field")]
    assert report["stages"][0]["documents_out"] == 3


def test_mixture_weights_repeat_and_subsample_sources(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    docs = {name: [_doc(seed * 100 + i) for i in range(n)]
            for seed, (name, n) in enumerate([("plain", 30), ("triple", 30), ("half", 60)], 1)}
    for name, texts in docs.items():
        (raw / f"{name}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                   for t in texts))
    out = prepare(_config(raw, tmp_path / "out", **{"mixture.weights": "triple=3,half=0.5"}))
    tok = Tokenizer.load(out / "tokenizer")
    meta = json.loads((out / "meta.json").read_text())
    records = RecordSet(out, "train", "text", meta["dtype"])
    written = Counter(" ".join(tok.decode(records.tokens(i)).split())
                      for i in range(len(records)))
    copies = {name: [written[" ".join(t.split())] for t in texts] for name, texts in docs.items()}
    assert copies["plain"] == [1] * 30  # weight 1 (unnamed): each document once
    assert copies["triple"] == [3] * 30  # weight 3: each document three times
    assert set(copies["half"]) == {0, 1} and 20 <= sum(copies["half"]) <= 40  # about half
    assert len(records) == 30 + 90 + sum(copies["half"]) == sum(written.values())


def test_non_utf8_text_file_missing_path_and_empty_inputs(tmp_path):
    bad = tmp_path / "latin.txt"
    bad.write_bytes(b"line one\ncaf\xe9\n")
    with pytest.raises(DataError, match=r"latin.txt:2: invalid utf-8"):
        prepare(_config(bad, tmp_path / "o1"))
    with pytest.raises(DataError, match="does not exist"):
        prepare(_config(tmp_path / "missing", tmp_path / "o2"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="no documents"):
        prepare(_config(empty, tmp_path / "o3"))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(DataError, match="no input files"):
        prepare(_config(tmp_path / "emptydir", tmp_path / "o4"))


def test_python_source_decoded_like_python(tmp_path):
    src = tmp_path / "legacy.py"
    text = "# -*- coding: latin-1 -*-\n" + "name = 'caf\u00e9'  # " + _doc(1)
    src.write_bytes(text.encode("latin-1"))
    out = prepare(_config(src, tmp_path / "out"))
    assert json.loads((out / "meta.json").read_text())["splits"]["train"]["text"]["documents"]


def test_parquet_and_zstd_inputs(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    zstd = pytest.importorskip("zstandard")
    pq.write_table(pa.table({"body": [_doc(i) for i in range(5)]}), tmp_path / "a.parquet")
    lines = "".join(json.dumps({"body": _doc(i)}) + "\n" for i in range(5, 9)).encode()
    (tmp_path / "b.jsonl.zst").write_bytes(zstd.ZstdCompressor().compress(lines))
    inputs = f"{tmp_path / 'a.parquet'},{tmp_path / 'b.jsonl.zst'}"
    out = prepare(_config(inputs, tmp_path / "out", text_field="body"))
    assert json.loads((out / "meta.json").read_text())["splits"]["train"]["text"][
        "documents"] == 9
    assert os.path.exists(out / "removed.jsonl")


def test_prepare_data_script(corpus, tmp_path):
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(root))
    cmd = [sys.executable, "scripts/prepare_data.py", "--config=configs/data.py",
           f"--config.inputs={corpus}", f"--config.output_dir={tmp_path / 'out'}",
           "--config.num_workers=0", "--config.tokenizer.vocab_size=450"]
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "dedup" in done.stdout and is_prepared(tmp_path / "out")
    bad = subprocess.run(cmd[:3] + [f"--config.inputs={tmp_path / 'nope'}",
                                    f"--config.output_dir={tmp_path / 'o2'}"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "does not exist" in bad.stderr


def test_prepare_data_script_corrupt_tokenizer_is_one_error_line(corpus, tmp_path):
    import subprocess
    import sys

    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.model").write_bytes(b"garbage")
    root = pathlib.Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "scripts/prepare_data.py", "--config=configs/data.py",
           f"--config.inputs={corpus}", f"--config.output_dir={tmp_path / 'out'}",
           f"--config.tokenizer.path={tok}"]
    done = subprocess.run(cmd, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: {tok / 'tokenizer.model'}: not a readable sentencepiece model")
    assert not (tmp_path / "out").exists()
