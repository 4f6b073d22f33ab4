"""Length buckets for batches of whole sequences (preference pairs, unpaired rows): a batch
is cut from `seq_len` columns to its longest row rounded up to a bucket, so a step does no
work on padding past that row and the jitted step compiles once per bucket, not per length.

`pad_to_multiple_of` (TRL's name) picks the buckets: 0 rounds up to the next of 16, 24, 32,
48, 64, 96, ... (a power of two or 1.5 times one: a batch padded by under 1.5x its longest
row, at most 2·log2(seq_len / 16) + 1 programs), N > 0 to a multiple of N, and `seq_len`
keeps every batch at `seq_len` columns. Every bucket is capped at `seq_len`.
"""

from __future__ import annotations

import numpy as np

MIN_BUCKET = 16


def check_multiple(value, key: str) -> int:
    """`value` as a valid `pad_to_multiple_of` (an int >= 0); errors name `key`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key}={value!r}: expected an integer >= 0 (0: power-of-two "
                         "buckets; N: a multiple of N; seq_len: no trimming)")
    return int(value)


def longest_row(batch: dict) -> int:
    """Columns up to the last non-padding position of any row (segment id > 0) of any of the
    batch's `*segment_ids` arrays; 0 for an all-padding batch."""
    longest = 0
    for key, segments_BT in batch.items():
        if key.endswith("segment_ids"):
            real_T = np.asarray(segments_BT).any(axis=0)
            if real_T.any():
                longest = max(longest, int(np.flatnonzero(real_T)[-1]) + 1)
    return longest


def bucket_length(longest: int, seq_len: int, multiple: int) -> int:
    """The bucket a batch whose longest row has `longest` tokens is padded to."""
    if multiple == 0:  # the next of 16, 24, 32, 48, 64, 96, ...: 2^k or 1.5 * 2^k
        power = 1 << max(int(longest) - 1, 0).bit_length()
        bucket = max(MIN_BUCKET, 3 * power // 4 if longest <= 3 * power // 4 else power)
    else:
        bucket = -(-max(int(longest), 1) // multiple) * multiple
    return min(bucket, seq_len)


def agreed_longest(longest: int) -> int:
    """The longest row over every process's share of the global batch (the global array
    needs one width); this process's value when it runs alone."""
    import jax

    if jax.process_count() == 1:
        return longest
    from jax.experimental import multihost_utils

    return int(np.max(multihost_utils.process_allgather(np.asarray([longest], np.int32))))


def trim_batch(batch: dict, seq_len: int, multiple: int, longest: int | None = None) -> dict:
    """`batch` with every [rows, seq_len] array cut to the global batch's bucket; other
    arrays (per-row values, strings) unchanged. `longest`: the columns the step needs when
    more than the rows' own (already agreed across processes)."""
    if longest is None:
        longest = agreed_longest(longest_row(batch))
    length = bucket_length(longest, seq_len, multiple)
    if length >= seq_len:
        return batch
    return {k: (v[:, :length] if isinstance(v, np.ndarray) and v.ndim == 2
                and v.shape[1] == seq_len else v) for k, v in batch.items()}
