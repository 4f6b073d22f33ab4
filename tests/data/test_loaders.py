"""Loaders: packing never mixes documents, masks, sharding, epochs, exact resume."""

import json

import numpy as np
import pytest

from llm.data import DataError, loaders
from llm.data.records import RecordSet, ShardWriter, shard_prefix

PAD = 0


def _write(root, stream, docs, masks=None, extras=None, shards=2):
    """Write docs round-robin into `shards` shards of records/train/<stream>."""
    writers = [ShardWriter(shard_prefix(root, "train", stream, s), np.uint16, masks is not None,
                           extras is not None) for s in range(shards)]
    for i, d in enumerate(docs):
        writers[i % shards].add(d, None if masks is None else masks[i],
                                None if extras is None else extras[i])
    for w in writers:
        w.close()


def _meta(root):
    (root / "meta.json").write_text(json.dumps({"dtype": "uint16", "pad_id": PAD}))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    rng = np.random.default_rng(0)
    # Distinct ids per document (doc d uses ids 1000*d + k) so a row reveals its sources.
    docs = [1000 * d + np.arange(rng.integers(1, 40)) + 1 for d in range(1, 30)]
    _write(root, "text", docs)
    _meta(root)
    return root


def _check_pretrain_row(row, seq_len):
    tok, tgt, pos, seg, lm = (row[k] for k in ("tokens", "targets", "positions",
                                                "segment_ids", "loss_mask"))
    doc_of = lambda ids: ids // 1000
    assert seg.min() >= 1 and np.all(np.diff(seg) >= 0)  # no padding in pretraining rows
    for s in np.unique(seg):
        where = np.flatnonzero(seg == s)
        assert len(np.unique(doc_of(tok[where]))) == 1  # one document per segment
        assert np.array_equal(pos[where], np.arange(len(where)))  # positions restart
        assert np.array_equal(np.diff(tok[where]), np.ones(len(where) - 1))  # contiguous
    # A target counts only when it is the next token of the same document.
    same = doc_of(tgt) == doc_of(tok)
    assert np.array_equal(lm.astype(bool), same)
    assert np.all(tgt[same] == tok[same] + 1)


def test_pretrain_rows_never_mix_documents(text_dir):
    ds = loaders.pretrain_loader(text_dir, "train", 16, 4, seed=0, num_epochs=1)
    batches = list(ds)
    assert len(batches) == loaders.num_batches(text_dir, "train", "pretrain", 16, 4)
    for b in batches:
        assert {k: (v.shape, v.dtype.name) for k, v in b.items()} == {
            "tokens": ((4, 16), "int32"), "targets": ((4, 16), "int32"),
            "positions": ((4, 16), "int32"), "segment_ids": ((4, 16), "int32"),
            "loss_mask": ((4, 16), "float32")}
        for row in range(4):
            _check_pretrain_row({k: v[row] for k, v in b.items()}, 16)


def test_epoch_covers_every_window_once_and_reshuffles(text_dir):
    n = loaders.num_examples(text_dir, "train", "pretrain", 16)
    ds = loaders.pretrain_loader(text_dir, "train", 16, 1, seed=3, num_epochs=2)
    rows = [b["tokens"][0].tobytes() for b in ds]
    first, second = rows[:n], rows[n:]
    assert len(set(first)) == n and set(first) == set(second) and first != second
    unshuffled = [b["tokens"][0].tobytes() for b in loaders.pretrain_loader(
        text_dir, "train", 16, 1, seed=3, num_epochs=1, shuffle=False)]
    assert set(unshuffled) == set(first) and unshuffled != first


def test_process_shards_are_disjoint_and_cover(text_dir):
    n = loaders.num_examples(text_dir, "train", "pretrain", 16)
    parts = [{b["tokens"][0].tobytes() for b in loaders.pretrain_loader(
        text_dir, "train", 16, 1, seed=1, num_epochs=1, shard_index=i, shard_count=2)}
        for i in range(2)]
    assert not parts[0] & parts[1]
    assert len(parts[0]) == len(parts[1]) == n // 2


@pytest.mark.parametrize("processes", [2, 3])
def test_global_batches_and_positions_do_not_depend_on_the_process_count(text_dir, processes):
    one = iter(loaders.pretrain_loader(text_dir, "train", 8, 6, seed=2, num_epochs=None))
    shards = [iter(loaders.pretrain_loader(text_dir, "train", 8, 6 // processes, seed=2,
                                           num_epochs=None, shard_index=i,
                                           shard_count=processes))
              for i in range(processes)]
    for _ in range(12):  # across epoch boundaries
        whole = next(one)
        parts = [next(it) for it in shards]
        for key in whole:
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])
        assert [it.get_state() for it in shards] == [one.get_state()] * processes
    # so a position saved by one process count is the same position for another
    moved = iter(loaders.pretrain_loader(text_dir, "train", 8, 6 // processes, seed=2,
                                         num_epochs=None, shard_index=1,
                                         shard_count=processes))
    moved.set_state(one.get_state())
    expected = next(one)["tokens"][6 // processes:2 * (6 // processes)]
    np.testing.assert_array_equal(next(moved)["tokens"], expected)


def test_a_finite_stream_gives_every_process_the_same_batch_count(text_dir):
    counts = [len(list(loaders.pretrain_loader(text_dir, "train", 8, 2, seed=0, num_epochs=1,
                                               shard_index=i, shard_count=3)))
              for i in range(3)]
    n = loaders.num_examples(text_dir, "train", "pretrain", 8)
    assert counts == [n // 2 // 3] * 3


def _assert_resume_everywhere(ds, steps):
    """grain-style: restore a fresh iterator at every position and compare the rest."""
    it = iter(ds)
    states, outputs = [], []
    for _ in range(steps):
        states.append(it.get_state())
        outputs.append(next(it))
    for k, state in enumerate(states):
        fresh = iter(ds)
        fresh.set_state(state)
        for expected in outputs[k:]:
            got = next(fresh)
            for key in expected:
                np.testing.assert_array_equal(got[key], expected[key])


def test_pretrain_resume_at_every_step(text_dir):
    n = loaders.num_batches(text_dir, "train", "pretrain", 8, 3)
    ds = loaders.pretrain_loader(text_dir, "train", 8, 3, seed=5, num_epochs=None)
    _assert_resume_everywhere(ds, n + 4)  # across an epoch boundary


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sft")
    rng = np.random.default_rng(1)
    docs, masks = [], []
    for d in range(1, 25):
        n = int(rng.integers(3, 20))
        docs.append(1000 * d + np.arange(n) + 1)
        masks.append((rng.random(n) < 0.5).astype(np.uint8))
    _write(root, "sft", docs, masks)
    _write(root, "chosen", docs, masks)
    _write(root, "rejected", [d + 500 for d in docs], masks)
    _write(root, "prompt", docs, extras=[{"answer": str(d)} for d in range(1, 25)])
    _meta(root)
    return root, dict(zip([d[0] // 1000 for d in docs], masks, strict=True))


def test_sft_mask_is_exactly_the_marked_targets(sft_dir):
    root, masks = sft_dir
    seen = set()
    for b in loaders.sft_loader(root, "train", 32, 1, seed=0, num_epochs=1):
        for r in range(1):
            tok, tgt, seg, lm = (b[k][r] for k in ("tokens", "targets", "segment_ids",
                                                    "loss_mask"))
            for s in np.unique(seg[seg > 0]):
                where = np.flatnonzero(seg == s)
                doc = int(tok[where[0]] // 1000)
                seen.add(doc)
                expected = np.zeros(len(where))
                expected[:-1] = masks[doc][1:len(where)]  # target t+1 is learnt iff marked
                np.testing.assert_array_equal(lm[where], expected)
            assert np.all(lm[seg == 0] == 0) and np.all(tok[seg == 0] == PAD)
    assert seen == set(masks)  # packing kept every example


def test_sft_resume_at_every_step(sft_dir):
    ds = loaders.sft_loader(sft_dir[0], "train", 32, 2, seed=0, num_epochs=2)
    _assert_resume_everywhere(ds, 2 * loaders.num_batches(sft_dir[0], "train", "sft", 32, 2))


def test_preference_rows(sft_dir):
    root, masks = sft_dir
    b = next(iter(loaders.preference_loader(root, "train", 24, 3, seed=0, num_epochs=1)))
    for r in range(3):
        c, j = b["chosen_tokens"][r], b["rejected_tokens"][r]
        n = int((b["chosen_segment_ids"][r] > 0).sum())
        assert np.array_equal(j[:n], c[:n] + 500)  # the pair stays together
        doc = int(c[0] // 1000)
        np.testing.assert_array_equal(b["chosen_loss_mask"][r][:n - 1], masks[doc][1:n])


def test_prompt_rows(sft_dir):
    root, _ = sft_dir
    b = next(iter(loaders.prompt_loader(root, "train", 8, 4, seed=0, num_epochs=1)))
    assert b["prompt_tokens"].shape == (4, 8) and b["prompt_lengths"].shape == (4,)
    for r in range(4):
        n = b["prompt_lengths"][r]
        assert np.all(b["prompt_tokens"][r][n:] == PAD)
        assert b["answer"][r] == str(int(b["prompt_tokens"][r][0] // 1000))


def test_records_round_trip_and_errors(tmp_path, sft_dir):
    rs = RecordSet(sft_dir[0], "train", "sft", "uint16")
    assert len(rs) == 24 and rs.num_shards == 2
    assert rs.tokens(1)[0] == 3001 and rs.tokens(12)[0] == 2001 and rs.extra(0) is None
    with pytest.raises(DataError, match="no 'text' records"):
        RecordSet(sft_dir[0], "train", "text", "uint16")
    w = ShardWriter(shard_prefix(tmp_path, "train", "x", 0), np.uint16)
    with pytest.raises(DataError, match="out of range"):
        w.add([70000])
    with pytest.raises(DataError, match="not a prepared data directory"):
        loaders.pretrain_loader(tmp_path, "train", 8, 1, 0, 1)
