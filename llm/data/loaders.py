"""grain loaders over prepared records: pretraining windows, packed SFT, preferences, prompts.

Every loader is a random-access `grain.MapDataset` (window or row i is computed from the
memory-mapped records), so the pipeline is: source → seeded shuffle (a new order each
epoch) → repeat → batch (this process's share) → this process's batches
(`[shard_index::shard_count]` of them, so the global batch is the same for any process
count) → `to_iter_dataset()`. `iter(loader)` gives a grain `DatasetIterator` whose
`get_state()` is the checkpointed position: restoring it with `set_state` yields exactly
the remaining stream, neither repeating nor skipping an example.

Batches are dicts of numpy arrays [batch_size, seq_len] (batch_size is this process's
share; per-row values such as a pair's `margin` are [batch_size]): `tokens`, `targets`
(next token), `positions` (restarting at 0 per document in the row), `segment_ids` (1, 2,
... per document, 0 on padding) and `loss_mask` (float32: 0 where the target crosses into
another document or padding, or is not to be learnt).
"""

from __future__ import annotations

import json
import pathlib

import grain
import numpy as np

from llm.data import DataError
from llm.data.records import RecordSet

META_FILE = "meta.json"


def read_meta(prepared_dir: str | pathlib.Path) -> dict:
    """The prepared directory's meta.json."""
    path = pathlib.Path(prepared_dir) / META_FILE
    if not path.exists():
        raise DataError("not a prepared data directory (no meta.json); run "
                        "scripts/prepare_data.py or point data.path at raw inputs", str(path))
    return json.loads(path.read_text())


def _records(prepared_dir, split: str, stream: str) -> tuple[RecordSet, dict]:
    meta = read_meta(prepared_dir)
    return RecordSet(prepared_dir, split, stream, meta["dtype"]), meta


# ----- row builders ------------------------------------------------------------------------
def pack_row(pieces: list[tuple[np.ndarray, np.ndarray]], seq_len: int, pad_id: int) -> dict:
    """Pack whole documents (ids, per-token loss mask) into one row of `seq_len`.

    A document's last token has no target; targets never cross into another segment.
    """
    tokens = np.full(seq_len, pad_id, np.int32)
    targets = np.full(seq_len, pad_id, np.int32)
    positions = np.zeros(seq_len, np.int32)
    segments = np.zeros(seq_len, np.int32)
    loss = np.zeros(seq_len, np.float32)
    at = 0
    for seg, (ids, mask) in enumerate(pieces, start=1):
        n = min(len(ids), seq_len - at)
        if n <= 0:
            break
        tokens[at:at + n] = ids[:n]
        positions[at:at + n] = np.arange(n)
        segments[at:at + n] = seg
        m = min(n, len(ids) - 1)  # tokens that have a next token inside the document
        targets[at:at + m] = ids[1:m + 1]
        loss[at:at + m] = mask[1:m + 1]
        at += n
    return {"tokens": tokens, "targets": targets, "positions": positions,
            "segment_ids": segments, "loss_mask": loss}


class _Windows:
    """Window i = seq_len + 1 consecutive ids of one shard's token stream (documents abut)."""

    def __init__(self, records: RecordSet, seq_len: int):
        self._rs, self._len = records, seq_len
        per_shard = [max(0, (len(records.shard_tokens(s)) - 1) // seq_len)
                     for s in range(records.num_shards)]
        self._starts = np.concatenate([[0], np.cumsum(per_shard)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> dict:
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        begin = (i - int(self._starts[shard])) * self._len
        span = np.asarray(self._rs.shard_tokens(shard)[begin:begin + self._len + 1], np.int32)
        offsets = self._rs.shard_offsets(shard)
        doc = np.searchsorted(offsets, np.arange(begin, begin + self._len + 1), "right") - 1
        doc_start = np.maximum(offsets[doc[:-1]], begin)
        same = doc[1:] == doc[:-1]
        return {
            "tokens": span[:-1],
            "targets": span[1:],
            "positions": (np.arange(begin, begin + self._len) - doc_start).astype(np.int32),
            "segment_ids": (doc[:-1] - doc[0] + 1).astype(np.int32),
            "loss_mask": same.astype(np.float32),
        }


class _PackedRows:
    """Row r packs whole examples order[row_start[r]:row_start[r+1]] (greedy, next-fit)."""

    def __init__(self, records: RecordSet, seq_len: int, pad_id: int):
        self._rs, self._len, self._pad = records, seq_len, pad_id
        # A fixed packing order (rows are shuffled later with the run's seed), so the row
        # count does not depend on the seed.
        self._order = np.random.default_rng(0).permutation(len(records))
        lengths = np.minimum(records.lengths[self._order], seq_len)
        starts, used = [0], 0
        for k, n in enumerate(lengths):
            if used + n > seq_len and used > 0:
                starts.append(k)
                used = 0
            used += int(n)
        starts.append(len(lengths))
        self._row_start = np.asarray(starts if len(lengths) else [0], np.int64)

    def __len__(self) -> int:
        return len(self._row_start) - 1

    def __getitem__(self, r: int) -> dict:
        ids = self._order[self._row_start[r]:self._row_start[r + 1]]
        return pack_row([(self._rs.tokens(int(i)), self._rs.mask(int(i))) for i in ids],
                         self._len, self._pad)


TRUNCATION_MODES = ("skip", "keep_start", "keep_end")


def long_pairs(chosen: RecordSet, rejected: RecordSet | None, seq_len: int) -> np.ndarray:
    """Indices of the pairs whose chosen or rejected sequence is longer than seq_len (of the
    unpaired rows longer than seq_len when `rejected` is None)."""
    too_long = chosen.lengths > seq_len
    if rejected is not None:
        too_long |= rejected.lengths > seq_len
    return np.flatnonzero(too_long)


def _check_mode(truncation_mode: str) -> None:
    if truncation_mode not in TRUNCATION_MODES:
        raise DataError(f"truncation_mode={truncation_mode!r}: expected one of "
                        f"{TRUNCATION_MODES}")


def _cut(ids: np.ndarray, mask: np.ndarray, seq_len: int, mode: str):
    """keep_end keeps a sequence's last seq_len tokens; pack_row cuts the rest from the end."""
    if mode == "keep_end":
        return ids[-seq_len:], mask[-seq_len:]
    return ids, mask


class _Pairs:
    """Pair i: the chosen and the rejected sequence, one per row, loss on response tokens.

    A pair longer than seq_len is never cut silently: `truncation_mode` 'skip' leaves it out,
    'keep_start' keeps each sequence's first seq_len tokens (TRL's default), 'keep_end' its
    last (the prompt's start goes first).
    """

    def __init__(self, chosen: RecordSet, rejected: RecordSet, seq_len: int, pad_id: int,
                 truncation_mode: str = "keep_start"):
        if len(chosen) != len(rejected):
            raise DataError("chosen and rejected records differ in count")
        _check_mode(truncation_mode)
        self._c, self._r, self._len, self._pad = chosen, rejected, seq_len, pad_id
        self._mode = truncation_mode
        self._index = np.arange(len(chosen))
        if truncation_mode == "skip":
            self._index = np.setdiff1d(self._index, long_pairs(chosen, rejected, seq_len))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def records(self) -> np.ndarray:
        """The record index of each pair i (pairs left out by 'skip' have none)."""
        return self._index

    def __getitem__(self, i: int) -> dict:
        out = {}
        record = int(self._index[i])
        for name, rs in (("chosen", self._c), ("rejected", self._r)):
            ids, mask = _cut(rs.tokens(record), rs.mask(record), self._len, self._mode)
            row = pack_row([(ids, mask)], self._len, self._pad)
            out.update({f"{name}_{k}": v for k, v in row.items()})
        extra = self._c.extra(record)  # None in data prepared before margins were kept
        out["margin"] = np.float32(extra["margin"] if extra else 0.0)
        out["record_index"] = np.int32(record)
        return out


def pair_source(chosen: RecordSet, rejected: RecordSet, seq_len: int, pad_id: int,
                truncation_mode: str = "keep_start") -> _Pairs:
    """The random-access pairs `preference_loader` batches (each with its `record_index`)."""
    return _Pairs(chosen, rejected, seq_len, pad_id, truncation_mode)


class _Unpaired:
    """Row i: one prompt + completion (KTO's unpaired row), loss on completion tokens, its
    `label` (1 desirable, 0 undesirable), `prompt_lengths` (prompt tokens kept in the row)
    and `record_index`. Rows longer than seq_len as in `_Pairs`."""

    def __init__(self, records: RecordSet, seq_len: int, pad_id: int,
                 truncation_mode: str = "keep_start"):
        _check_mode(truncation_mode)
        self._rs, self._len, self._pad, self._mode = records, seq_len, pad_id, truncation_mode
        self._index = np.arange(len(records))
        if truncation_mode == "skip":
            self._index = np.setdiff1d(self._index, long_pairs(records, None, seq_len))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict:
        record = int(self._index[i])
        ids, mask = self._rs.tokens(record), self._rs.mask(record)
        extra = self._rs.extra(record)
        prompt = int(extra["prompt_length"])
        if self._mode == "keep_end" and len(ids) > self._len:
            prompt = max(0, prompt - (len(ids) - self._len))
        ids, mask = _cut(ids, mask, self._len, self._mode)
        row = pack_row([(ids, mask)], self._len, self._pad)
        return {**row, "label": np.int32(bool(extra["label"])),
                "prompt_lengths": np.int32(min(prompt, self._len)),
                "record_index": np.int32(record)}


class _Prompts:
    """Prompt i right-padded to max_prompt_len (the tail kept when longer), with its answer."""

    def __init__(self, records: RecordSet, max_prompt_len: int, pad_id: int):
        self._rs, self._len, self._pad = records, max_prompt_len, pad_id

    def __len__(self) -> int:
        return len(self._rs)

    def __getitem__(self, i: int) -> dict:
        ids = self._rs.tokens(i)[-self._len:]
        tokens = np.full(self._len, self._pad, np.int32)
        tokens[:len(ids)] = ids
        extra = self._rs.extra(i) or {}
        answer = extra.get("answer") if isinstance(extra, dict) else None
        return {"prompt_tokens": tokens, "prompt_lengths": np.int32(len(ids)),
                "answer": np.asarray("" if answer is None else str(answer), dtype=object)}


# ----- the grain pipeline ------------------------------------------------------------------
def _pipeline(source, batch_size: int, seed: int, num_epochs: int | None, shard_index: int,
              shard_count: int, shuffle: bool, drop_remainder: bool) -> grain.IterDataset:
    if not 0 <= shard_index < shard_count:
        raise DataError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    ds = grain.MapDataset.source(source)
    if len(ds) == 0:
        raise DataError("the split holds no examples: it is too small for the sequence length")
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs)
    # The global stream is cut into process-sized batches and global batch k is batches
    # k*shard_count .. k*shard_count + shard_count - 1, one per process: the rows a step
    # trains on, and the iterator position (`next_index` = global batches read), do not
    # depend on the process count, so a run resumes with another count (see loop.py).
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    # Whole global batches only, so no process waits on a collective the others skip.
    ds = ds[:len(ds) - len(ds) % shard_count][shard_index::shard_count]
    if len(ds) == 0:
        raise DataError(f"this process's shard ({shard_index} of {shard_count}) holds no "
                        f"batch of {batch_size}: the split is too small for the sequence "
                        "length and batch size")
    return ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def pretrain_loader(prepared_dir, split: str, seq_len: int, batch_size: int, seed: int,
                    num_epochs: int | None, shard_index: int = 0, shard_count: int = 1,
                    shuffle: bool = True, drop_remainder: bool = True) -> grain.IterDataset:
    """Batches of packed pretraining windows (see the module docstring for keys)."""
    rs, _ = _records(prepared_dir, split, "text")
    return _pipeline(_Windows(rs, seq_len), batch_size, seed, num_epochs, shard_index,
                     shard_count, shuffle, drop_remainder)


def sft_loader(prepared_dir, split: str, seq_len: int, batch_size: int, seed: int,
               num_epochs: int | None, shard_index: int = 0, shard_count: int = 1,
               shuffle: bool = True, drop_remainder: bool = True) -> grain.IterDataset:
    """Batches of packed chat examples; loss_mask is 1 exactly on assistant targets."""
    rs, meta = _records(prepared_dir, split, "sft")
    return _pipeline(_PackedRows(rs, seq_len, meta["pad_id"]), batch_size, seed,
                     num_epochs, shard_index, shard_count, shuffle, drop_remainder)


def preference_loader(prepared_dir, split: str, seq_len: int, batch_size: int, seed: int,
                      num_epochs: int | None, shard_index: int = 0, shard_count: int = 1,
                      shuffle: bool = True, drop_remainder: bool = True,
                      truncation_mode: str = "keep_start") -> grain.IterDataset:
    """Batches of `chosen_*` and `rejected_*` rows (loss only on response tokens), each
    pair's `margin` (0 when the row gave none) and `record_index`; pairs longer than
    seq_len as `truncation_mode` says (see `_Pairs`)."""
    chosen, meta = _records(prepared_dir, split, "chosen")
    rejected, _ = _records(prepared_dir, split, "rejected")
    return _pipeline(_Pairs(chosen, rejected, seq_len, meta["pad_id"], truncation_mode),
                     batch_size, seed, num_epochs, shard_index, shard_count, shuffle,
                     drop_remainder)


def unpaired_loader(prepared_dir, split: str, seq_len: int, batch_size: int, seed: int,
                    num_epochs: int | None, shard_index: int = 0, shard_count: int = 1,
                    shuffle: bool = True, drop_remainder: bool = True,
                    truncation_mode: str = "keep_start") -> grain.IterDataset:
    """Batches of unpaired (KTO) rows: the packed-row keys plus `label`, `prompt_lengths`
    and `record_index` (see `_Unpaired`)."""
    rs, meta = _records(prepared_dir, split, "completion")
    return _pipeline(_Unpaired(rs, seq_len, meta["pad_id"], truncation_mode), batch_size,
                     seed, num_epochs, shard_index, shard_count, shuffle, drop_remainder)


def unpaired_records(prepared_dir, split: str) -> RecordSet:
    """The unpaired (KTO) record set of a prepared split."""
    return _records(prepared_dir, split, "completion")[0]


def preference_records(prepared_dir, split: str) -> tuple[RecordSet, RecordSet]:
    """The chosen and rejected record sets of a prepared split."""
    return _records(prepared_dir, split, "chosen")[0], _records(prepared_dir, split,
                                                                 "rejected")[0]


def prompt_loader(prepared_dir, split: str, max_prompt_len: int, batch_size: int, seed: int,
                  num_epochs: int | None, shard_index: int = 0, shard_count: int = 1,
                  shuffle: bool = True, drop_remainder: bool = True) -> grain.IterDataset:
    """Batches of RL prompts: `prompt_tokens` [b, max_prompt_len], `prompt_lengths`, `answer`."""
    rs, meta = _records(prepared_dir, split, "prompt")
    return _pipeline(_Prompts(rs, max_prompt_len, meta["pad_id"]), batch_size, seed,
                     num_epochs, shard_index, shard_count, shuffle, drop_remainder)


def num_examples(prepared_dir, split: str, kind: str, seq_len: int) -> int:
    """Rows (windows, packed rows, pairs or prompts) in one epoch of a split, all processes."""
    meta = read_meta(prepared_dir)
    if kind == "pretrain":
        return len(_Windows(RecordSet(prepared_dir, split, "text", meta["dtype"]), seq_len))
    if kind == "sft":
        rs = RecordSet(prepared_dir, split, "sft", meta["dtype"])
        return len(_PackedRows(rs, seq_len, meta["pad_id"]))
    stream = {"preference": "chosen", "unpaired": "completion", "prompt": "prompt"}.get(kind)
    if stream is None:
        raise DataError(f"unknown loader kind {kind!r}; expected pretrain, sft, preference, "
                        "unpaired, prompt")
    return len(RecordSet(prepared_dir, split, stream, meta["dtype"]))


def num_batches(prepared_dir, split: str, kind: str, seq_len: int, batch_size: int,
                shard_count: int = 1) -> int:
    """Full batches per epoch for one process (drop_remainder=True)."""
    return num_examples(prepared_dir, split, kind, seq_len) // shard_count // batch_size
