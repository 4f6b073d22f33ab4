"""Exact and near-duplicate detection: vectorised MinHash + LSH banding + union-find.

Stages (each a pure numpy function, so an executor can run the first per shard and the
rest on the merged arrays):

1. `shingle_hashes`: word (or UTF-8 byte) n-gram hashes for a batch of documents with no
   Python loop per word: a polynomial hash of every whitespace-delimited word is read off
   a prefix sum over the batch's bytes (mod 2^64; the multiplier is odd, so invertible),
   then mixed (splitmix64) and combined n at a time.
2. `signatures`: one-permutation MinHash (each shingle hashed once into one of `num_perm`
   bins, min per bin via `np.minimum.at`) with rotation densification for empty bins
   (Shrivastava 2017). Cost is O(shingles), not O(shingles × permutations).
3. `candidate_pairs`: LSH banding; `choose_banding` picks the most rows per band for
   which P(candidate | Jaccard = threshold) ≥ target recall, so the 50% point of the
   S-curve sits well below the threshold.
4. `verify`: keep candidates whose true shingle Jaccard (or the MinHash estimate) reaches
   the threshold; `components` unions them, every document labelled by the smallest
   global index in its cluster, i.e. the first by (source, line), which is kept.

All hashes are fixed arithmetic or xxhash: identical on every process and machine.
"""

from __future__ import annotations

import numpy as np
import xxhash

_U64 = np.uint64
_Q = 0x100000001B3  # odd multiplier of the byte polynomial
_QINV = pow(_Q, -1, 2**64)
_R = None  # filled below, once _mix exists: 32 odd constants for n-gram positions
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_EMPTY = np.uint32(0xFFFFFFFF)


def exact_key(text: str) -> str:
    """Hash of a document's normalised text (exact-duplicate key)."""
    return xxhash.xxh3_128_hexdigest(" ".join(text.split()).encode("utf-8"))


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser, elementwise on uint64 (wraps mod 2^64)."""
    z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
    return z ^ (z >> _U64(31))


_R = (_mix(np.arange(1, 33, dtype=_U64)) | _U64(1))


def _powers(base: int, n: int) -> np.ndarray:
    out = np.full(n, base, dtype=_U64)
    out[0] = 1
    return np.cumprod(out, dtype=_U64)


def shingle_hashes(texts: list[str], ngram: int, unit: str = "word"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64 [S], doc_of_shingle int64 [S]) for the n-grams of each (lowercased) text."""
    if ngram > len(_R):
        raise ValueError(f"dedup.ngram must be <= {len(_R)}, got {ngram}")
    encoded = [t.lower().encode("utf-8") for t in texts]
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    doc_end = np.cumsum([len(e) + 1 for e in encoded])  # exclusive end (+ separator)
    if unit == "char":
        keep = ~_WHITESPACE[data] if len(data) else np.zeros(0, bool)
        starts = np.flatnonzero(keep)
        unit_hash = _mix(data[starts].astype(_U64) + _U64(1))
    elif unit == "word":
        space = _WHITESPACE[data]
        edge = np.diff(np.concatenate([[1], space.view(np.int8), [1]]).astype(np.int8))
        starts = np.flatnonzero(edge == -1)
        ends = np.flatnonzero(edge == 1)
        with np.errstate(over="ignore"):
            prefix = np.zeros(len(data) + 1, dtype=_U64)
            np.cumsum((data.astype(_U64) + _U64(1)) * _powers(_Q, len(data)), out=prefix[1:])
            word = (prefix[ends] - prefix[starts]) * _powers(_QINV, len(data) + 1)[starts]
        unit_hash = _mix(word)
    else:
        raise ValueError(f"dedup.ngram_unit must be 'word' or 'char', got {unit!r}")
    doc = np.searchsorted(doc_end, starts, side="right").astype(np.int64)
    m = len(unit_hash)
    if m == 0:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    pad_doc = np.concatenate([doc, np.full(ngram, -1)])
    pad_hash = np.concatenate([unit_hash, np.zeros(ngram, _U64)])
    acc = np.zeros(m, dtype=_U64)
    with np.errstate(over="ignore"):
        for k in range(ngram):
            same = pad_doc[k:k + m] == doc
            acc += np.where(same, pad_hash[k:k + m] * _R[k], _U64(0))
    full = pad_doc[ngram - 1:ngram - 1 + m] == doc
    counts = np.bincount(doc, minlength=len(texts))
    first = np.concatenate([[True], doc[1:] != doc[:-1]])
    short = first & (counts[doc] < ngram)  # a document shorter than n: one shingle of all
    valid = full | short
    return _mix(acc[valid]), doc[valid]


def signatures(texts: list[str], num_perm: int, ngram: int, unit: str = "word") -> np.ndarray:
    """One-permutation MinHash signatures, uint32 [len(texts), num_perm] (densified)."""
    hashes, doc = shingle_hashes(texts, ngram, unit)
    n = len(texts)
    sig = np.full(n * num_perm, np.iinfo(np.uint64).max, dtype=_U64)
    bins = ((hashes >> _U64(32)) * _U64(num_perm)) >> _U64(32)
    np.minimum.at(sig, doc.astype(_U64) * _U64(num_perm) + bins, hashes & _U64(0xFFFFFFFF))
    sig = sig.reshape(n, num_perm)
    empty = sig == np.iinfo(np.uint64).max
    if empty.any():
        sig = _densify(sig, empty)
    return sig.astype(np.uint32)


def _densify(sig: np.ndarray, empty: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the next non-empty bin to its right (circularly)."""
    n, p = sig.shape
    cols = np.arange(2 * p)
    idx = np.where(np.concatenate([~empty, ~empty], axis=1), cols, 2 * p)
    nxt = np.minimum.accumulate(idx[:, ::-1], axis=1)[:, ::-1][:, :p]
    all_empty = nxt >= 2 * p
    nxt = np.where(all_empty, 0, nxt)
    dist = (nxt - np.arange(p)).astype(_U64)
    src = sig[np.arange(n)[:, None], nxt % p]
    filled = (_mix(src + dist * _U64(0x9E3779B97F4A7C15)) & _U64(0xFFFFFFFF))
    out = np.where(empty, filled, sig)
    out[all_empty] = _EMPTY
    return out


def choose_banding(num_perm: int, threshold: float, target_recall: float) -> tuple[int, int]:
    """(bands, rows): the most rows per band whose recall at `threshold` meets the target."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= target_recall:
            best = (bands, rows)
    return best


def candidate_pairs(sig: np.ndarray, bands: int, rows: int, max_bucket: int = 64) -> np.ndarray:
    """Unique pairs (i < j) sharing at least one band, int64 [M, 2]."""
    n = len(sig)
    if n < 2:
        return np.zeros((0, 2), np.int64)
    valid = ~(sig == _EMPTY).all(axis=1)
    out = []
    coef = _mix(np.arange(1, rows + 1, dtype=_U64))
    with np.errstate(over="ignore"):
        for b in range(bands):
            band = sig[:, b * rows:(b + 1) * rows].astype(_U64)
            key = _mix((band * coef).sum(axis=1, dtype=_U64) + _U64(b))
            order = np.argsort(key[valid], kind="stable")
            ids = np.flatnonzero(valid)[order]
            k = key[ids]
            for d in range(1, max_bucket):
                if d >= len(k):
                    break
                hit = np.flatnonzero(k[d:] == k[:-d])
                if len(hit) == 0:
                    break
                out.append(np.stack([ids[hit], ids[hit + d]], axis=1))
    if not out:
        return np.zeros((0, 2), np.int64)
    pairs = np.sort(np.concatenate(out), axis=1)
    keys = np.unique(pairs[:, 0] * n + pairs[:, 1])
    return np.stack([keys // n, keys % n], axis=1)


def estimated_jaccard(sig: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """MinHash agreement of each pair's signatures, float [M]."""
    if len(pairs) == 0:
        return np.zeros(0)
    return (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)


def true_jaccard(shingles_a: np.ndarray, shingles_b: np.ndarray) -> float:
    """Jaccard of two shingle-hash sets."""
    a, b = np.unique(shingles_a), np.unique(shingles_b)
    union = len(np.union1d(a, b))
    return len(np.intersect1d(a, b, assume_unique=True)) / union if union else 1.0


def components(n: int, pairs: np.ndarray) -> np.ndarray:
    """Union-find by min-label propagation: label[i] = smallest index in i's cluster."""
    label = np.arange(n, dtype=np.int64)
    if len(pairs) == 0:
        return label
    a, b = pairs[:, 0], pairs[:, 1]
    while True:
        m = np.minimum(label[a], label[b])
        before = label.copy()
        np.minimum.at(label, a, m)
        np.minimum.at(label, b, m)
        while True:  # pointer jumping
            jumped = label[label]
            if np.array_equal(jumped, label):
                break
            label = jumped
        if np.array_equal(label, before):
            return label
