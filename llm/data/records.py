"""Tokenised shards on disk: memory-mapped token arrays with document offsets.

A *stream* (e.g. `text`, `sft`, `chosen`, `rejected`, `completion`, `prompt`) of one split
is a set of shards `records/<split>/<stream>-<k>.*`:

  `.tokens.bin`  all documents' ids back to back (uint16 if the vocabulary fits, else uint32)
  `.offsets.npy` int64 [n + 1], document i is tokens[offsets[i]:offsets[i + 1]]
  `.mask.bin`    optional uint8 parallel to tokens (1 on tokens that carry loss: SFT)
  `.extra.jsonl` optional, one JSON value per document (e.g. the RL answer)

`RecordSet` opens every shard of a stream with `np.memmap` and gives random access to
document i across shards, which is what grain's `MapDataset` needs.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from llm.data import DataError

RECORDS_DIR = "records"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits, else uint32."""
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


def shard_prefix(root: str | pathlib.Path, split: str, stream: str, shard: int) -> pathlib.Path:
    """Path prefix of one shard of a stream (files add .tokens.bin, .offsets.npy, ...)."""
    return pathlib.Path(root) / RECORDS_DIR / split / f"{stream}-{shard:05d}"


# The input rows each record stream is made from (llm/data/stages.py tokenise_shard).
_STREAM_ROWS = {
    "text": "a text field (data.text_field), or plain text files",
    "sft": "a 'messages' list of {role, content} turns (chat)",
    "chosen": "'prompt', 'chosen' and 'rejected' (preferences)",
    "rejected": "'prompt', 'chosen' and 'rejected' (preferences)",
    "completion": "'prompt', 'completion' and 'label' (unpaired rows for KTO)",
    "prompt": "a 'prompt' (and an 'answer') but no text field (RL prompts)",
}


class ShardWriter:
    """Append documents to one shard; `close()` writes the offsets and returns counts."""

    def __init__(self, prefix: pathlib.Path, dtype: np.dtype, with_mask: bool = False,
                 with_extra: bool = False):
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self._prefix = prefix
        self._dtype = np.dtype(dtype)
        self._tokens = open(f"{prefix}.tokens.bin", "wb")  # noqa: SIM115 - closed in close()
        self._mask = open(f"{prefix}.mask.bin", "wb") if with_mask else None  # noqa: SIM115
        self._extra = open(f"{prefix}.extra.jsonl", "w") if with_extra else None  # noqa: SIM115
        self._offsets = [0]
        self._max_id = np.iinfo(self._dtype).max

    def add(self, tokens: Sequence[int], mask: Sequence[int] | None = None, extra=None) -> None:
        """Append one document (its ids, optional loss mask, optional JSON extra)."""
        arr = np.asarray(tokens, dtype=np.int64)
        if arr.size and (arr.min() < 0 or arr.max() > self._max_id):
            raise DataError(f"token id out of range for {self._dtype}", str(self._prefix))
        self._tokens.write(arr.astype(self._dtype).tobytes())
        if self._mask is not None:
            m = np.asarray(mask, dtype=np.uint8)
            if m.shape != arr.shape:
                raise DataError("mask and tokens differ in length", str(self._prefix))
            self._mask.write(m.tobytes())
        if self._extra is not None:
            self._extra.write(json.dumps(extra) + "\n")
        self._offsets.append(self._offsets[-1] + arr.size)

    def close(self) -> dict:
        """Finish the shard; returns {'documents', 'tokens'}."""
        for f in (self._tokens, self._mask, self._extra):
            if f is not None:
                f.close()
        np.save(f"{self._prefix}.offsets.npy", np.asarray(self._offsets, dtype=np.int64))
        return {"documents": len(self._offsets) - 1, "tokens": self._offsets[-1]}


class RecordSet:
    """Random access to the documents of one stream of one split, across its shards."""

    def __init__(self, root: str | pathlib.Path, split: str, stream: str, dtype: str):
        directory = pathlib.Path(root) / RECORDS_DIR / split
        prefixes = sorted(p.with_name(p.name[: -len(".offsets.npy")])
                          for p in directory.glob(f"{stream}-*.offsets.npy"))
        if not prefixes:
            rows = _STREAM_ROWS.get(stream, "another kind")
            raise DataError(f"no '{stream}' records for split '{split}': this needs input rows "
                            f"with {rows} (is the data of another kind, or the split empty?)",
                            str(directory))
        self.dtype = np.dtype(dtype)
        self._tokens, self._masks, self._offsets, self._extras = [], [], [], []
        for prefix in prefixes:
            offsets = np.load(f"{prefix}.offsets.npy")
            self._offsets.append(offsets)
            self._tokens.append(_memmap(f"{prefix}.tokens.bin", self.dtype, offsets[-1]))
            mask_path = pathlib.Path(f"{prefix}.mask.bin")
            self._masks.append(_memmap(mask_path, np.uint8, offsets[-1])
                               if mask_path.exists() else None)
            extra_path = pathlib.Path(f"{prefix}.extra.jsonl")
            self._extras.append([json.loads(x) for x in extra_path.read_text().splitlines()]
                                if extra_path.exists() else None)
        counts = np.array([len(o) - 1 for o in self._offsets], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.lengths = np.concatenate([np.diff(o) for o in self._offsets]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def num_shards(self) -> int:
        """How many shard files back this stream."""
        return len(self._offsets)

    def shard_tokens(self, shard: int) -> np.ndarray:
        """All ids of one shard, as a memory map."""
        return self._tokens[shard]

    def shard_offsets(self, shard: int) -> np.ndarray:
        """Document offsets (n + 1) of one shard."""
        return self._offsets[shard]

    def _locate(self, i: int) -> tuple[int, int]:
        if not 0 <= i < len(self):
            raise IndexError(f"document {i} out of range [0, {len(self)})")
        shard = int(np.searchsorted(self._starts, i, side="right") - 1)
        return shard, i - int(self._starts[shard])

    def tokens(self, i: int) -> np.ndarray:
        """Ids of document i (int32)."""
        shard, j = self._locate(i)
        o = self._offsets[shard]
        return np.asarray(self._tokens[shard][o[j]:o[j + 1]], dtype=np.int32)

    def mask(self, i: int) -> np.ndarray:
        """Loss mask of document i (uint8), all ones when the stream has no mask."""
        shard, j = self._locate(i)
        o = self._offsets[shard]
        if self._masks[shard] is None:
            return np.ones(o[j + 1] - o[j], dtype=np.uint8)
        return np.asarray(self._masks[shard][o[j]:o[j + 1]])

    def extra(self, i: int):
        """The JSON extra of document i, or None."""
        shard, j = self._locate(i)
        extras = self._extras[shard]
        return None if extras is None else extras[j]


def _memmap(path, dtype, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(int(count),))
