"""A prepared dataset carries a checksum manifest, hashed once at preparation; each training
start compares file sizes against it (cheap), so a truncated shard is an error naming it."""

import pytest
from test_prepare import _config

from llm.data import DataError, checksums
from llm.data.prepare import check_unchanged, prepare


def test_a_truncated_shard_is_named_at_the_next_start(raw, tmp_path, capsys):
    out = prepare(_config(raw, tmp_path / "out"))
    assert checksums.verify(out, extra_ok=True) is None  # full hashes match right after
    check_unchanged(out)
    shard = max((p for p in (out / "records").rglob("*") if p.is_file()),
                key=lambda p: p.stat().st_size)
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(DataError, match=f"{shard}: .* bytes, expected .*changed after"):
        check_unchanged(out)
    (out / checksums.MANIFEST).unlink()
    check_unchanged(out)  # prepared before checksums existed: accepted, with a warning
    assert "no checksum manifest" in capsys.readouterr().out
