"""Text normalisation and Gopher/C4-style quality filters.

`normalize` repairs mojibake with ftfy when it is installed (it undoes double-encoded UTF-8
and similar damage far better than any rule we would write), applies Unicode
normalisation, drops control characters (keeping tab and newline) and tidies whitespace.
`quality_problem` returns the name of the first failing filter (`None` if the document
passes); every filter is switchable and its threshold lives in `config.clean.filters`.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

from llm.data import DataError

try:
    import ftfy
except ImportError:  # optional: the `data` extra installs it
    ftfy = None

FILTERS = ("min_words", "max_words", "mean_word_length", "symbol_ratio", "digit_ratio",
           "alpha_words", "punct_lines", "bullet_lines", "ellipsis_lines", "duplicate_lines",
           "duplicate_paragraphs", "top_2gram", "duplicate_5gram")

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{4,}")
_WORD = re.compile(r"\S+")
_BULLET = re.compile(r"^\s*[-*\u2022\u2023\u25e6\u2043\u2219]\s")
_TERMINAL = (".", "!", "?", '"', "'", ":", ")", "]", "}", ";")


def normalize(text: str, cfg) -> str:
    """Repair, normalise and tidy one document according to `cfg` (config.clean)."""
    if cfg.fix_unicode and ftfy is not None:
        text = ftfy.fix_text(text, normalization=None, fix_line_breaks=False)
    if cfg.normalization:
        text = unicodedata.normalize(cfg.normalization, text)
    if cfg.normalize_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.strip_control:
        text = _CONTROL.sub("", text)
    if cfg.normalize_whitespace:
        text = _BLANKS.sub("\n\n\n", _TRAILING.sub("\n", text)).strip("\n")
        text = text + "\n" if text else text
    return text


def _duplicate_fraction(items: list[str], total_chars: int) -> float:
    """Characters in repeated copies of items, over all characters (Gopher)."""
    if not items or total_chars == 0:
        return 0.0
    seen: set[str] = set()
    dup = 0
    for item in items:
        if item in seen:
            dup += len(item)
        seen.add(item)
    return dup / total_chars


def _ngram_stats(words: list[str], n: int, total: int) -> tuple[float, float]:
    """(top n-gram char fraction, duplicate n-gram char fraction) for word n-grams.

    `total` is the words' character count. N-grams are tuples (hashed in C), not joined
    strings; the top one's length counts the n - 1 spaces a joined string would have.
    """
    if len(words) < n:
        return 0.0, 0.0
    grams = list(zip(*(words[k:len(words) - n + 1 + k] for k in range(n)), strict=True))
    counts = Counter(grams)
    top_count = max(counts.values())
    if top_count == 1:  # no n-gram repeats: nothing is duplicated
        return 0.0, 0.0
    top = next(g for g, c in counts.items() if c == top_count)  # as most_common(1) picks
    total = total or 1
    top_frac = (sum(map(len, top)) + n - 1) * top_count / total
    covered = bytearray(len(words))
    for i in [i for i, g in enumerate(grams) if counts[g] > 1]:
        covered[i:i + n] = b"\x01" * n
    dup_chars = sum(len(w) for w, c in zip(words, covered, strict=True) if c)
    return top_frac, dup_chars / total


def _digits(text: str) -> int:
    """How many characters of text are digits (str.isdigit)."""
    if text.isascii():
        return sum(text.count(d) for d in "0123456789")
    return sum(map(str.isdigit, text))


def quality_problem(text: str, f) -> str | None:
    """Name of the first failing quality filter for `text`, or None (f = config.filters)."""
    enabled = {name.strip() for name in f.enabled.split(",") if name.strip()}
    words = _WORD.findall(text)
    n = len(words)
    if "min_words" in enabled and n < f.min_words:
        return "min_words"
    if "max_words" in enabled and n > f.max_words:
        return "max_words"
    if n == 0:
        return None
    chars = sum(map(len, words))
    if "mean_word_length" in enabled:
        mean = chars / n
        if not f.min_mean_word_length <= mean <= f.max_mean_word_length:
            return "mean_word_length"
    if "symbol_ratio" in enabled:
        symbols = text.count("#") + text.count("...") + text.count("\u2026")
        if symbols / n > f.max_symbol_ratio:
            return "symbol_ratio"
    if "digit_ratio" in enabled and _digits(text) / len(text) > f.max_digit_ratio:
        return "digit_ratio"
    if "alpha_words" in enabled and f.min_alpha_word_fraction > 0:
        alpha = sum(any(c.isalpha() for c in w) for w in words) / n
        if alpha < f.min_alpha_word_fraction:
            return "alpha_words"
    lines = [ln for ln in text.split("\n") if ln.strip()]
    if lines:
        if "punct_lines" in enabled and f.min_punct_line_fraction > 0:
            ends = sum(ln.rstrip().endswith(_TERMINAL) for ln in lines) / len(lines)
            if ends < f.min_punct_line_fraction:
                return "punct_lines"
        if "bullet_lines" in enabled and \
                sum(bool(_BULLET.match(ln)) for ln in lines) / len(lines) > \
                f.max_bullet_line_fraction:
            return "bullet_lines"
        if "ellipsis_lines" in enabled and sum(ln.rstrip().endswith(("...", "\u2026"))
                                                for ln in lines) / len(lines) > \
                f.max_ellipsis_line_fraction:
            return "ellipsis_lines"
        if "duplicate_lines" in enabled and _duplicate_fraction(lines, len(text)) > \
                f.max_duplicate_line_fraction:
            return "duplicate_lines"
    if "duplicate_paragraphs" in enabled:
        paras = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
        if _duplicate_fraction(paras, len(text)) > f.max_duplicate_paragraph_fraction:
            return "duplicate_paragraphs"
    if "top_2gram" in enabled or "duplicate_5gram" in enabled:
        top2, _ = _ngram_stats(words, 2, chars) if "top_2gram" in enabled else (0.0, 0.0)
        if top2 > f.max_top_2gram_fraction:
            return "top_2gram"
        _, dup5 = (_ngram_stats(words, 5, chars) if "duplicate_5gram" in enabled
                   else (0.0, 0.0))
        if dup5 > f.max_duplicate_5gram_fraction:
            return "duplicate_5gram"
    return None


NORMALIZATIONS = ("NFC", "NFD", "NFKC", "NFKD")


def check_config(c) -> None:
    """Raise DataError naming a bad `clean.*` setting (config.clean)."""
    if c.normalization and c.normalization not in NORMALIZATIONS:
        raise DataError(f"clean.normalization must be one of {', '.join(NORMALIZATIONS)} or '' "
                        f"(none), got {c.normalization!r}")
    check_filter_names(c.filters.enabled)


def check_filter_names(enabled: str) -> None:
    """Raise DataError naming an unknown filter in a comma-separated list."""
    for name in (x.strip() for x in enabled.split(",")):
        if name and name not in FILTERS:
            from difflib import get_close_matches

            raise DataError(f"unknown filter {name!r} in clean.filters.enabled; close: "
                             f"{get_close_matches(name, FILTERS)}; all: {FILTERS}")
