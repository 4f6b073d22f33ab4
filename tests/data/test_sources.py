"""Sharded reading: byte-range shards of a JSONL see every line once, numbered, reading once."""

import gzip
import io
import json
import random

import pytest

from llm.data import DataError, sources, stages


def _jsonl(path, n_lines=200, seed=0, crlf=False, trailing_newline=True):
    """Lines of very different lengths (one far longer than a read buffer), some blank."""
    rng = random.Random(seed)
    lines = []
    for i in range(n_lines):
        if rng.random() < 0.1:
            lines.append(b"" if rng.random() < 0.5 else b"   ")
            continue
        words = rng.randint(1, 30) if i != n_lines // 2 else 40_000
        lines.append(json.dumps({"text": " ".join(f"w{i}x{k}" for k in range(words)),
                                 "i": i}).encode())
    end = b"\r\n" if crlf else b"\n"
    path.write_bytes(end.join(lines) + (end if trailing_newline else b""))
    return path


def _read(path, part=(0, 1), before=None):
    return [(r.line, r.fields["text"]) for r in
            sources.read_records(path, part=part, lines_before=before)]


@pytest.mark.parametrize("n", [2, 3, 7, 64, 3000])
@pytest.mark.parametrize("crlf,trailing", [(False, True), (True, False)])
def test_byte_range_shards_cover_every_line_once(tmp_path, n, crlf, trailing):
    path = _jsonl(tmp_path / "a.jsonl", crlf=crlf, trailing_newline=trailing)
    whole = _read(path)
    assert [line for line, _ in whole] == [
        i + 1 for i, raw in enumerate(path.read_bytes().splitlines()) if raw.strip()]
    counted = stages.lines_before([stages.count_lines([str(path)], k, n) for k in range(n)])
    got = []
    for k in range(n):
        mine = _read(path, (k, n), counted[k].get(0, 0))
        assert mine == _read(path, (k, n))  # counting the lines itself gives the same numbers
        got += mine
    assert got == whole


def test_byte_range_shards_read_the_file_about_once(tmp_path, monkeypatch):
    path = _jsonl(tmp_path / "big.jsonl", n_lines=20_000, seed=1)
    size = path.stat().st_size
    read = [0]

    class Counting(io.FileIO):
        def readinto(self, buffer):
            n = super().readinto(buffer)
            read[0] += n or 0
            return n

    monkeypatch.setattr(sources, "_open_binary", lambda p: io.BufferedReader(Counting(p)))
    shards = 4
    counts = [stages.count_lines([str(path)], k, shards) for k in range(shards)]
    before = stages.lines_before(counts)
    lines = sum(len(_read(path, (k, shards), before[k][0])) for k in range(shards))
    assert lines == len(_read(path)) > 17_000
    read[0] = 0
    for k in range(shards):  # the pre-pass and the shards' reads together
        stages.count_lines([str(path)], k, shards)
        _read(path, (k, shards), before[k][0])
    # One newline count plus one parse of each byte, give or take a buffer per shard;
    # reading the whole file in every shard would be 4 file sizes.
    assert read[0] <= 2 * size + shards * (1 << 17)


def test_compressed_jsonl_shards_by_line_and_corruption_names_the_file(tmp_path):
    plain = _jsonl(tmp_path / "a.jsonl", n_lines=50)
    packed = tmp_path / "a.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    assert not sources.splits_by_bytes(packed) and sources.splits_by_bytes(plain)
    whole = _read(packed)
    assert whole == _read(plain)
    assert sorted(x for k in range(3) for x in _read(packed, (k, 3))) == whole
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(packed.read_bytes()[: len(packed.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"cut.jsonl.gz:\d+: unreadable"):
        _read(truncated)


@pytest.mark.parametrize("name", ["rows.json", "table.csv", "rows.jsonl.bz2", "README"])
def test_unknown_suffix_of_a_named_file_is_refused(tmp_path, name):
    (tmp_path / name).write_text('[{"text": "a b c"}]')
    with pytest.raises(DataError, match=r"unknown input format.*\.jsonl.*\.gz/\.zst"):
        sources.list_input_files(str(tmp_path / name))


def test_known_suffixes_of_named_files_are_read(tmp_path):
    for name in ("a.txt", "b.jsonl.gz", "c.PY"):
        (tmp_path / name).write_text("x")
    names = ",".join(str(tmp_path / n) for n in ("a.txt", "b.jsonl.gz", "c.PY"))
    assert len(sources.list_input_files(names)) == 3
