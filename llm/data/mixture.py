"""Mixtures: per-source weights that repeat (weight > 1) or subsample (weight < 1) the
training documents of each source, decided per document by a stable hash."""

from __future__ import annotations

import xxhash

from llm.data import DataError


def mixture_weights(spec: str) -> list[tuple[str, float]]:
    """Parse 'source=weight,...' into [(substring of the source path, weight)]."""
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        name, sep, value = item.rpartition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or weight < 0:
            raise DataError(f"mixture.weights entry {item!r}: expected source=weight with "
                            "weight >= 0")
        out.append((name, weight))
    return out


def repeats(source: str, key: str, weights: list[tuple[str, float]]) -> int:
    """How many copies of a training document the mixture asks for: the whole part of its
    source's weight, plus one more with probability equal to the fraction (hash-rounded, so
    every run and shard count agrees)."""
    w = next((w for name, w in weights if name in source), 1.0)
    whole = int(w)
    frac = w - whole
    u = xxhash.xxh64_intdigest(key.encode("utf-8"), seed=7) / 2.0**64
    return whole + int(u < frac)
