"""Row rules for preference pairs and unpaired (KTO) rows, applied when data is prepared:
a row that cannot teach a preference is dropped, counted in report.json and listed in
removed.jsonl."""

from __future__ import annotations


def pair_problem(fields: dict) -> str | None:
    """Why a `prompt`/`chosen`/`rejected` row is unusable ('empty_chosen', 'empty_rejected',
    'identical_pair'), or None when it is a pair to learn from."""
    for key in ("chosen", "rejected"):
        if not fields[key].strip():
            return f"empty_{key}"
    if fields["chosen"].strip() == fields["rejected"].strip():
        return "identical_pair"
    return None


def unpaired_problem(fields: dict) -> str | None:
    """Why a `prompt`/`completion`/`label` (KTO) row is unusable ('empty_completion'), or None."""
    return None if fields["completion"].strip() else "empty_completion"
