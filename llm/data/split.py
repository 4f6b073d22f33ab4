"""Deterministic train/validation/test assignment by document hash.

A document's split depends only on its content (xxh64 of the text, seed 0), never on its
position, the order of inputs, the shard count or the machine, so re-running preparation
or adding files never moves a document from train into validation or back.
"""

from __future__ import annotations

import math

import xxhash

from llm.data import DataError

SPLITS = ("train", "validation", "test")


def check_fractions(validation: float, test: float) -> None:
    """Raise DataError unless validation and test are finite, >= 0 and sum below 1."""
    for key, value in (("split.validation", validation), ("split.test", test)):
        if not (math.isfinite(value) and value >= 0):
            raise DataError(f"{key} must be a finite fraction >= 0, got {value}")
    if validation + test >= 1:
        raise DataError(f"split.validation + split.test must be below 1 (training needs the "
                        f"rest); got {validation} + {test}")


def split_of(key: str, validation: float, test: float) -> str:
    """'train', 'validation' or 'test' for a document whose content key is `key`."""
    u = xxhash.xxh64_intdigest(key.encode("utf-8"), seed=0x5EED) / 2.0**64
    if u < validation:
        return "validation"
    if u < validation + test:
        return "test"
    return "train"
