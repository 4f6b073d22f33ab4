"""Exact and near-duplicate detection: vectorised MinHash + LSH banding + union-find.

Stages (each a pure numpy function, so an executor can run the first per shard and the
rest on the merged arrays):

1. `shingle_hashes`: word (or UTF-8 byte) n-gram hashes for a batch of documents. A word's
   hash is the polynomial sum(byte_j + 1) * Q^j mod 2^64, mixed (splitmix64); n of them
   are combined with fixed odd multipliers and mixed again.
2. `signatures`: one-permutation MinHash (each shingle hashed once into one of `num_perm`
   bins, min per bin) with rotation densification for empty bins (Shrivastava 2017).
   Cost is O(shingles), not O(shingles × permutations).

Both run as one compiled pass over each document's bytes when numba is installed (the
`data` extra): no per-word Python and no temporaries the size of the batch. Without numba
the same arithmetic runs as whole-batch numpy (a prefix sum over the bytes gives every
word's hash, `np.minimum.at` the bin minima): slower, bit-identical; a test holds the two
to the same output.
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

from llm.data import DataError

try:
    import numba
except ImportError:  # the `data` extra installs it; without it the numpy path runs
    numba = None

_U64 = np.uint64
_Q = 0x100000001B3  # odd multiplier of the byte polynomial
_QINV = pow(_Q, -1, 2**64)
_Q64 = _U64(_Q)
_R = None  # filled below, once _mix exists: 32 odd constants for n-gram positions
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[[9, 10, 11, 12, 13, 32]] = True
_EMPTY = np.uint32(0xFFFFFFFF)
UNITS = ("word", "char")
VERIFY = ("estimate", "jaccard")  # MinHash agreement | exact shingle Jaccard


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


def check_ngram(ngram: int, key: str) -> None:
    """Raise DataError naming `key` unless 1 <= ngram <= the longest n-gram hashed."""
    if not 1 <= ngram <= len(_R):
        raise DataError(f"{key} must be in 1..{len(_R)}, got {ngram}")


def _check(ngram: int, unit: str) -> None:
    check_ngram(ngram, "ngram")
    if unit not in UNITS:
        raise DataError(f"dedup.ngram_unit must be one of {UNITS}, got {unit!r}")


def check_config(d) -> None:
    """Raise DataError naming the first out-of-range `dedup.*` setting (config.dedup)."""
    check_ngram(d.ngram, "dedup.ngram")
    if d.ngram_unit not in UNITS:
        raise DataError(f"dedup.ngram_unit must be one of {UNITS}, got {d.ngram_unit!r}")
    if d.num_perm < 1:
        raise DataError(f"dedup.num_perm must be >= 1, got {d.num_perm}")
    if not 0 < d.threshold <= 1:  # a Jaccard similarity: pairs at or above it are duplicates
        raise DataError(f"dedup.threshold is a Jaccard similarity: expected 0 < threshold <= 1,"
                        f" got {d.threshold}")
    if not 0 < d.target_recall <= 1:
        raise DataError(f"dedup.target_recall must be in (0, 1], got {d.target_recall}")
    if d.bands < 0 or d.rows < 0 or (d.bands > 0) != (d.rows > 0) or \
            d.bands * d.rows > d.num_perm:
        raise DataError(f"dedup.bands={d.bands}, dedup.rows={d.rows}: set both with bands * "
                        f"rows <= dedup.num_perm ({d.num_perm}), or both 0 to choose them")
    if d.verify not in VERIFY:
        raise DataError(f"dedup.verify must be one of {VERIFY}, got {d.verify!r}")
    if d.max_bucket < 2:
        raise DataError(f"dedup.max_bucket must be >= 2, got {d.max_bucket}")


def _encode(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The lowercased UTF-8 bytes of all texts, uint8 [B], and each one's start, int64 [N + 1]."""
    encoded = [t.lower().encode("utf-8") for t in texts]
    offsets = np.zeros(len(encoded) + 1, np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def shingle_hashes(texts: list[str], ngram: int, unit: str = "word"
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(hashes uint64 [S], doc_of_shingle int64 [S]) for the n-grams of each (lowercased) text."""
    _check(ngram, unit)
    if numba is None:
        return _shingle_hashes_numpy(texts, ngram, unit)
    data, offsets = _encode(texts)
    return _shingles_kernel(data, offsets, ngram, unit == "char", _R)


def signatures(texts: list[str], num_perm: int, ngram: int, unit: str = "word") -> np.ndarray:
    """One-permutation MinHash signatures, uint32 [len(texts), num_perm] (densified)."""
    _check(ngram, unit)
    if numba is None:
        return _signatures_numpy(texts, num_perm, ngram, unit)
    data, offsets = _encode(texts)
    return _signatures_kernel(data, offsets, ngram, unit == "char", _R, num_perm)


# ----- compiled path (numba): one pass over each document's bytes ---------------------------
def _jit(fn):
    return numba.njit(cache=True, nogil=True)(fn) if numba is not None else fn


_M1, _M2 = _U64(0xBF58476D1CE4E5B9), _U64(0x94D049BB133111EB)
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_LOW32 = _U64(0xFFFFFFFF)
_MAX64 = _U64(0xFFFFFFFFFFFFFFFF)


@_jit
def _mix1(z):
    z = (z ^ (z >> _U64(30))) * _M1
    z = (z ^ (z >> _U64(27))) * _M2
    return z ^ (z >> _U64(31))


@_jit
def _emit(h, sink, at, i, num_perm):
    """Shingle i's hash h: stored at sink[at + i], or (num_perm > 0) min'ed into its bin."""
    if num_perm == 0:
        sink[at + i] = h
    else:
        b = at + np.int64(((h >> _U64(32)) * _U64(num_perm)) >> _U64(32))
        v = h & _LOW32
        if v < sink[b]:
            sink[b] = v


@_jit
def _scan_doc(data, start, end, ngram, char, r, sink, at, num_perm):
    """Hash the n-grams of data[start:end] into `sink` (see _emit); returns how many."""
    ring = np.zeros(len(r), np.uint64)  # the last `ngram` unit hashes, circularly
    units = 0
    slot = 0
    emitted = 0
    h = _U64(0)
    power = _U64(1)
    in_word = False
    for j in range(start, end + 1):
        b = data[j] if j < end else np.uint8(32)  # a final space closes the last word
        space = b == 32 or (b >= 9 and b <= 13)
        unit_done = False
        if char:
            if not space:
                h = _mix1(_U64(b) + _U64(1))
                unit_done = True
        elif space:
            if in_word:
                h = _mix1(h)
                unit_done = True
                in_word = False
        else:
            if not in_word:
                h, power, in_word = _U64(0), _U64(1), True
            h += (_U64(b) + _U64(1)) * power
            power *= _Q64
        if unit_done:
            ring[slot] = h
            units += 1
            slot = slot + 1 if slot + 1 < ngram else 0  # now the oldest unit's slot
            if units >= ngram:
                acc = _U64(0)
                k_slot = slot
                for k in range(ngram):
                    acc += ring[k_slot] * r[k]
                    k_slot = k_slot + 1 if k_slot + 1 < ngram else 0
                _emit(_mix1(acc), sink, at, emitted, num_perm)
                emitted += 1
    if 0 < units < ngram:  # shorter than n: one shingle of all its units
        acc = _U64(0)
        for k in range(units):
            acc += ring[k] * r[k]
        _emit(_mix1(acc), sink, at, 0, num_perm)
        emitted = 1
    return emitted


@_jit
def _shingles_kernel(data, offsets, ngram, char, r):
    n = len(offsets) - 1
    out = np.empty(len(data), np.uint64)  # a shingle has at least one unit of >= 1 byte
    doc = np.empty(len(data), np.int64)
    at = 0
    for d in range(n):
        k = _scan_doc(data, offsets[d], offsets[d + 1], ngram, char, r, out, at, 0)
        doc[at:at + k] = d
        at += k
    return out[:at].copy(), doc[:at].copy()


@_jit
def _signatures_kernel(data, offsets, ngram, char, r, num_perm):
    n = len(offsets) - 1
    bins = np.full(num_perm, _MAX64, np.uint64)
    sig = np.empty((n, num_perm), np.uint32)
    for d in range(n):
        bins[:] = _MAX64
        _scan_doc(data, offsets[d], offsets[d + 1], ngram, char, r, bins, 0, num_perm)
        # Densify: an empty bin takes the next filled bin to its right (circularly),
        # re-mixed with the distance, as _densify does.
        nxt = -1
        for j in range(2 * num_perm - 1, -1, -1):
            jj = j % num_perm
            if bins[jj] != _MAX64:
                nxt = j
                if j < num_perm:
                    sig[d, j] = np.uint32(bins[j])
            elif j < num_perm:
                if nxt < 0:
                    sig[d, j] = np.uint32(_LOW32)
                else:
                    src = bins[nxt % num_perm]
                    sig[d, j] = np.uint32(_mix1(src + _U64(nxt - j) * _GOLDEN) & _LOW32)
    return sig


@_jit
def _pair_jaccard_kernel(hashes, lo, hi, pairs):
    """pair_jaccard with set k = unique(hashes[lo[k]:hi[k]]) and pairs indexing the sets."""
    n = len(lo)
    sets = np.empty(hi.sum() - lo.sum(), np.uint64)
    start = np.zeros(n + 1, np.int64)
    for k in range(n):  # each set sorted and deduplicated, packed one after another
        part = np.sort(hashes[lo[k]:hi[k]])
        at = start[k]
        for i in range(len(part)):
            if i == 0 or part[i] != part[i - 1]:
                sets[at] = part[i]
                at += 1
        start[k + 1] = at
    out = np.empty(len(pairs), np.float64)
    for m in range(len(pairs)):
        i, i_end = start[pairs[m, 0]], start[pairs[m, 0] + 1]
        j, j_end = start[pairs[m, 1]], start[pairs[m, 1] + 1]
        size = (i_end - i) + (j_end - j)
        inter = 0
        while i < i_end and j < j_end:  # merge-count the common hashes
            if sets[i] < sets[j]:
                i += 1
            elif sets[i] > sets[j]:
                j += 1
            else:
                inter += 1
                i += 1
                j += 1
        out[m] = inter / (size - inter) if size else 1.0
    return out


# ----- numpy path (no numba): the same hashes, batch-vectorised ----------------------------
def _shingle_hashes_numpy(texts: list[str], ngram: int, unit: str = "word"
                          ) -> tuple[np.ndarray, np.ndarray]:
    encoded = [t.lower().encode("utf-8") for t in texts]
    data = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    doc_end = np.cumsum([len(e) + 1 for e in encoded])  # exclusive end (+ separator)
    if unit == "char":
        keep = ~_WHITESPACE[data] if len(data) else np.zeros(0, bool)
        starts = np.flatnonzero(keep)
        unit_hash = _mix(data[starts].astype(_U64) + _U64(1))
    else:
        space = _WHITESPACE[data]
        edge = np.diff(np.concatenate([[1], space.view(np.int8), [1]]).astype(np.int8))
        starts = np.flatnonzero(edge == -1)
        ends = np.flatnonzero(edge == 1)
        with np.errstate(over="ignore"):
            prefix = np.zeros(len(data) + 1, dtype=_U64)
            np.cumsum((data.astype(_U64) + _U64(1)) * _powers(_Q, len(data)), out=prefix[1:])
            word = (prefix[ends] - prefix[starts]) * _powers(_QINV, len(data) + 1)[starts]
        unit_hash = _mix(word)
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


def _signatures_numpy(texts: list[str], num_perm: int, ngram: int, unit: str = "word"
                      ) -> np.ndarray:
    hashes, doc = _shingle_hashes_numpy(texts, ngram, unit)
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
    return _sorted_jaccard(np.unique(shingles_a), np.unique(shingles_b))


def _sorted_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted, duplicate-free arrays."""
    if len(a) < len(b):
        a, b = b, a  # look the smaller set up in the larger
    if len(b) == 0:
        return 0.0 if len(a) else 1.0
    at = np.searchsorted(a, b)
    at[at == len(a)] = 0
    inter = int(np.count_nonzero(a[at] == b))
    return inter / (len(a) + len(b) - inter)


def pair_jaccard(hashes: np.ndarray, doc: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """True shingle Jaccard of each pair (i, j), float [M]; hashes/doc as from shingle_hashes."""
    if len(pairs) == 0:
        return np.zeros(0)
    pairs = np.asarray(pairs, np.int64)
    need = np.unique(pairs)
    lo = np.searchsorted(doc, need, side="left")
    hi = np.searchsorted(doc, need, side="right")
    if numba is not None:
        return _pair_jaccard_kernel(hashes, lo, hi, np.searchsorted(need, pairs))
    sets = {int(i): np.unique(hashes[a:b]) for i, a, b in zip(need, lo, hi, strict=True)}
    return np.array([_sorted_jaccard(sets[a], sets[b]) for a, b in pairs.tolist()])


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
