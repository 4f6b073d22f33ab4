"""Mixtures: per-source weights that repeat (weight > 1) or subsample (weight < 1) the
training documents of each source, decided per document by a stable hash."""

from __future__ import annotations

import math
from collections.abc import Sequence

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
        if not sep or not name or not (math.isfinite(weight) and weight >= 0):
            raise DataError(f"mixture.weights entry {item!r}: expected source=weight with a "
                            "finite weight >= 0")
        out.append((name, weight))
    return out


def check_sources(weights: list[tuple[str, float]], files: Sequence[str]) -> None:
    """Raise DataError when a weight's name matches no input, or every input weighs 0."""
    for name, _ in weights:
        if not any(name in f for f in files):
            raise DataError(f"mixture.weights: {name!r} matches no input path (a name must be "
                            f"part of an input file's path); inputs: {_some(files)}")
    if weights and all(weight_of(f, weights) == 0 for f in files):
        raise DataError("mixture.weights gives every input weight 0: no training data is left")


def _some(files: Sequence[str], n: int = 3) -> str:
    return ", ".join(files[:n]) + (f" and {len(files) - n} more" if len(files) > n else "")


def weight_of(source: str, weights: list[tuple[str, float]]) -> float:
    """The weight of a source: that of the first name it contains, else 1."""
    return next((w for name, w in weights if name in source), 1.0)


def repeats(source: str, key: str, weights: list[tuple[str, float]]) -> int:
    """How many copies of a training document the mixture asks for: the whole part of its
    source's weight, plus one more with probability equal to the fraction (hash-rounded, so
    every run and shard count agrees)."""
    w = weight_of(source, weights)
    whole = int(w)
    frac = w - whole
    u = xxhash.xxh64_intdigest(key.encode("utf-8"), seed=7) / 2.0**64
    return whole + int(u < frac)
