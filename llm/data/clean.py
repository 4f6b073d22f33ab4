"""Text normalisation and the quality filters (Gopher, C4, FineWeb) of pretraining text.

`normalize` repairs mojibake with ftfy when it is installed (it undoes double-encoded UTF-8
and similar damage far better than any rule we would write), applies Unicode
normalisation, drops control characters (keeping tab and newline) and tidies whitespace.
`clean_text` runs the enabled filters in a fixed order: Gopher's quality and repetition
filters on the document (gopher.py; words as words.py defines them), then C4's line
rewriting (c4.py), then the bad-words list and FineWeb's filters on the rewritten text. It
returns the text and the first failing filter with its value and threshold. Every filter
is switchable (`clean.filters.enabled`) and its thresholds live in `config.clean.filters`
(configs/data.py: presets `code`, `web`, `fineweb`). Only plain text records are cleaned:
chat, preference and prompt rows never are.
"""

from __future__ import annotations

import functools
import re
import unicodedata

from llm.data import DataError, c4, gopher
from llm.data.words import Doc

try:
    import ftfy
except ImportError:  # optional: the `data` extra installs it
    ftfy = None

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
_TRAILING = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{4,}")


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


Problem = tuple[str, float, float]  # (filter, the document's value, the threshold it crossed)


def _on(stat):
    """A statistic of the document alone, called as stat(doc, filters)."""
    return lambda doc, f: stat(doc)


# Document filters in the order they run: (name, statistic, key of the lowest allowed value,
# key of the highest); C4's line rewriting runs between the Gopher and the FineWeb groups.
_GOPHER: tuple = (
    ("min_words", _on(gopher.n_words), "min_words", None),
    ("max_words", _on(gopher.n_words), None, "max_words"),
    ("mean_word_length", _on(gopher.mean_word_length), "min_mean_word_length",
     "max_mean_word_length"),
    ("hash_ratio", _on(gopher.hash_ratio), None, "max_hash_ratio"),
    ("ellipsis_ratio", _on(gopher.ellipsis_ratio), None, "max_ellipsis_ratio"),
    ("bullet_lines", _on(gopher.bullet_lines), None, "max_bullet_line_fraction"),
    ("ellipsis_lines", _on(gopher.ellipsis_lines), None, "max_ellipsis_line_fraction"),
    ("alpha_words", _on(gopher.alpha_words), "min_alpha_word_fraction", None),
    ("stop_words", lambda d, f: gopher.stop_words(d, _vocabulary(f.stop_words)),
     "min_stop_words", None),
    ("digit_ratio", _on(gopher.digit_ratio), None, "max_digit_ratio"),
    ("duplicate_paragraphs", _on(gopher.duplicate_paragraphs), None,
     "max_duplicate_paragraph_fraction"),
    ("duplicate_paragraph_chars", _on(gopher.duplicate_paragraph_chars), None,
     "max_duplicate_paragraph_char_fraction"),
    ("duplicate_lines", _on(gopher.duplicate_lines), None, "max_duplicate_line_fraction"),
    ("duplicate_line_chars", _on(gopher.duplicate_line_chars), None,
     "max_duplicate_line_char_fraction"),
    *((f"top_{n}gram", _on(functools.partial(gopher.top_ngram, n=n)), None,
       f"max_top_{n}gram_fraction") for n in (2, 3, 4)),
    *((f"duplicate_{n}gram", _on(functools.partial(gopher.duplicate_ngram, n=n)), None,
       f"max_duplicate_{n}gram_fraction") for n in range(5, 11)),
)
_AFTER_LINES: tuple = (
    ("bad_words", lambda d, f: c4.bad_words(d, f.bad_words_file), None, None),
    ("punct_lines", _on(c4.punct_lines), "min_punct_line_fraction", None),
    ("short_lines", lambda d, f: c4.short_lines(d, f.short_line_length), None,
     "max_short_line_fraction"),
    ("line_char_duplicates", _on(c4.line_char_duplicates), None, "max_line_char_duplicates"),
    ("list_like", _on(c4.list_like), None, "max_newlines_per_word"),
)
FILTERS = tuple(r[0] for r in _GOPHER) + c4.LINE_FILTERS + c4.DOC_FILTERS + \
    tuple(r[0] for r in _AFTER_LINES)
_C4 = frozenset(c4.LINE_FILTERS + c4.DOC_FILTERS)


@functools.lru_cache(maxsize=16)
def enabled_filters(enabled: str) -> frozenset:
    """The names in a comma-separated `clean.filters.enabled`."""
    return frozenset(name.strip() for name in enabled.split(",") if name.strip())


@functools.lru_cache(maxsize=16)
def _vocabulary(words: str) -> frozenset:
    return frozenset(w.strip() for w in words.split(",") if w.strip())


def _first_problem(rules: tuple, doc: Doc, f, enabled: frozenset) -> Problem | None:
    """The first enabled rule `doc` fails, with its value and the bound it crossed."""
    for name, stat, lo, hi in rules:
        if name not in enabled:
            continue
        if lo is None and hi is None:  # a yes/no rule (bad words)
            if f.bad_words_file and stat(doc, f):
                return name, 1.0, 0.0
            continue
        value = float(stat(doc, f))
        if lo is not None and value < f[lo]:
            return name, value, float(f[lo])
        if hi is not None and value > f[hi]:
            return name, value, float(f[hi])
    return None


def clean_text(text: str, f, lines_dropped: dict | None = None) -> tuple[str, Problem | None]:
    """(text after C4's line rewriting, the first failing filter or None); f = clean.filters.

    Lines C4 removes are counted into `lines_dropped` by filter name.
    """
    enabled = enabled_filters(f.enabled)
    problem = _first_problem(_GOPHER, Doc(text), f, enabled)
    if problem is not None:
        return text, problem
    if enabled & _C4:
        text, problem = c4.clean_lines(text, f, enabled,
                                       {} if lines_dropped is None else lines_dropped)
        if problem is not None:
            return text, problem
    return text, _first_problem(_AFTER_LINES, Doc(text), f, enabled)


def quality_problem(text: str, f) -> str | None:
    """Name of the first failing quality filter for `text`, or None (f = config.filters)."""
    problem = clean_text(text, f)[1]
    return None if problem is None else problem[0]


NORMALIZATIONS = ("NFC", "NFD", "NFKC", "NFKD")


def check_config(c) -> None:
    """Raise DataError naming a bad `clean.*` setting (config.clean)."""
    if c.normalization and c.normalization not in NORMALIZATIONS:
        raise DataError(f"clean.normalization must be one of {', '.join(NORMALIZATIONS)} or '' "
                        f"(none), got {c.normalization!r}")
    f = c.filters
    check_filter_names(f.enabled)
    for key, value in f.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise DataError(f"clean.filters.{key} must be >= 0, got {value}")
    enabled = enabled_filters(f.enabled)
    if "stop_words" in enabled and not _vocabulary(f.stop_words):
        raise DataError("clean.filters.stop_words is empty but the stop_words filter is on; "
                        "give comma-separated words or drop stop_words from "
                        "clean.filters.enabled")
    if f.bad_words_file:
        if "bad_words" not in enabled:
            raise DataError("clean.filters.bad_words_file is set but the bad_words filter is "
                            "not in clean.filters.enabled")
        c4.bad_words_pattern(f.bad_words_file)  # unreadable or empty: a DataError now


def check_filter_names(enabled: str) -> None:
    """Raise DataError naming an unknown filter in a comma-separated list."""
    for name in (x.strip() for x in enabled.split(",")):
        if name and name not in FILTERS:
            from difflib import get_close_matches

            raise DataError(f"unknown filter {name!r} in clean.filters.enabled; close: "
                            f"{get_close_matches(name, FILTERS)}; all: {', '.join(FILTERS)}")
