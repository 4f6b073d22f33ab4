"""Decontamination: find training documents that share a long word n-gram (13 words by
default) with held-out text (the validation/test splits and named evaluation files).

Held-out n-grams are kept as a sorted array of 64-bit hashes (the same shingle hashes near
dedup uses), so the check is one vectorised membership test per batch of documents.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from llm.data import DataError, dedup

ACTIONS = ("drop", "report")  # drop contaminated training documents, or only list them


def check_config(d) -> None:
    """Raise DataError naming a bad `decontaminate.*` setting (config.decontaminate)."""
    dedup.check_ngram(d.ngram, "decontaminate.ngram")
    if d.action not in ACTIONS:
        raise DataError(f"decontaminate.action must be one of {ACTIONS}, got {d.action!r}")


def ngram_set(texts: Iterable[str], n: int, batch: int = 512) -> np.ndarray:
    """Sorted unique hashes of every word n-gram in `texts`, hashed `batch` at a time
    (the kernels' buffers scale with the bytes hashed at once)."""
    unique = [np.zeros(0, np.uint64)]
    chunk: list[str] = []
    for text in texts:
        chunk.append(text)
        if len(chunk) == batch:
            unique.append(np.unique(dedup.shingle_hashes(chunk, n)[0]))
            chunk = []
    if chunk:
        unique.append(np.unique(dedup.shingle_hashes(chunk, n)[0]))
    return np.unique(np.concatenate(unique))


def sharing(texts: list[str], n: int, ngrams: np.ndarray) -> np.ndarray:
    """Indices of the `texts` that contain at least one n-gram hash in `ngrams`."""
    hashes, doc = dedup.shingle_hashes(texts, n)
    return np.unique(doc[np.isin(hashes, ngrams)])
