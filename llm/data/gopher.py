"""Gopher's quality and repetition statistics (Rae et al. 2021, appendix A1.1 and table A1).

Each function maps a `words.Doc` to the one number its filter compares with a threshold.
Where the paper leaves a choice open, the definition follows datatrove's
GopherQualityFilter / GopherRepetitionFilter (the implementation FineWeb was built with),
except where noted:

- word counts and the mean word length use content words (not symbol words); the `#` and
  ellipsis ratios and the alphabetic-word fraction divide by all words, punctuation included;
- a bullet line starts (after spaces) with `•` or `-`, an ellipsis line ends with `...` or
  `…`; both are fractions of all lines, blank ones included;
- stop words are matched case-sensitively ("The" is not "the"), as datatrove does;
- character fractions of repeated lines, paragraphs and n-grams divide by the document's
  length in characters;
- duplicate lines/paragraphs count only repeat copies (the first stays unique);
- the top n-gram is the most frequent word n-gram (first seen wins a tie), its length with
  the n - 1 joining spaces; unlike datatrove it counts only when it occurs twice or more (an
  n-gram seen once is not repetition: datatrove drops any very short text here);
- duplicate n-grams, as datatrove: scanning left to right, an n-gram seen before adds its
  characters (without spaces) and the scan jumps past it, so overlapping repeats count once;
  first occurrences never count. RedPajama instead counts every word covered by an n-gram
  that occurs twice, first copy included (higher on the same text).
"""

from __future__ import annotations

from collections import Counter

from llm.data.words import Doc, has_alpha

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")


def n_words(doc: Doc) -> float:
    """Content words (symbol words do not count)."""
    return len(doc.content_words)


def mean_word_length(doc: Doc) -> float:
    """Mean characters per content word (0 without any)."""
    words = doc.content_words
    return sum(map(len, words)) / len(words) if words else 0.0


def hash_ratio(doc: Doc) -> float:
    """'#' characters per word."""
    return doc.text.count("#") / max(1, len(doc.words))


def ellipsis_ratio(doc: Doc) -> float:
    """'...' and '…' per word."""
    return (doc.text.count("...") + doc.text.count("…")) / max(1, len(doc.words))


def bullet_lines(doc: Doc) -> float:
    """Fraction of lines starting with a bullet ('•' or '-')."""
    lines = doc.lines
    return sum(ln.lstrip().startswith(("•", "-")) for ln in lines) / max(1, len(lines))


def ellipsis_lines(doc: Doc) -> float:
    """Fraction of lines ending in an ellipsis."""
    lines = doc.lines
    return sum(ln.rstrip().endswith(("...", "…")) for ln in lines) / max(1, len(lines))


def alpha_words(doc: Doc) -> float:
    """Fraction of words with at least one letter (1 for an empty document)."""
    words = doc.words
    if not words:
        return 1.0
    letters = sum(map(str.isalpha, words))  # in C; the rest need a closer look
    if letters < len(words):
        letters = sum(map(has_alpha, words))
    return letters / len(words)


def stop_words(doc: Doc, vocabulary: frozenset) -> float:
    """How many different stop words occur."""
    return len(vocabulary.intersection(doc.words))


def digit_ratio(doc: Doc) -> float:
    """Digits per character (not Gopher's: ours, for tables of numbers)."""
    text = doc.text
    if text.isascii():
        digits = sum(text.count(d) for d in "0123456789")
    else:
        digits = sum(map(str.isdigit, text))
    return digits / max(1, len(text))


def repeats(items: list[str]) -> tuple[int, int]:
    """(repeat copies, their characters): the first copy of each item is not a repeat."""
    seen: set[str] = set()
    copies = chars = 0
    for item in items:
        if item in seen:
            copies += 1
            chars += len(item)
        else:
            seen.add(item)
    return copies, chars


def duplicate_lines(doc: Doc) -> float:
    """Fraction of lines that repeat an earlier line."""
    return repeats(doc.line_runs)[0] / max(1, len(doc.line_runs))


def duplicate_line_chars(doc: Doc) -> float:
    """Characters in repeated lines over the document's characters."""
    return repeats(doc.line_runs)[1] / max(1, len(doc.text))


def duplicate_paragraphs(doc: Doc) -> float:
    """Fraction of paragraphs that repeat an earlier paragraph."""
    return repeats(doc.paragraphs)[0] / max(1, len(doc.paragraphs))


def duplicate_paragraph_chars(doc: Doc) -> float:
    """Characters in repeated paragraphs over the document's characters."""
    return repeats(doc.paragraphs)[1] / max(1, len(doc.text))


def _grams(words: list[str], n: int) -> list[tuple[str, ...]]:
    """Word n-grams as tuples (hashed in C; no joined strings)."""
    return list(zip(*(words[k:len(words) - n + 1 + k] for k in range(n)), strict=True))


def top_ngram(doc: Doc, n: int) -> float:
    """Characters of the most frequent repeated word n-gram (spaces included) × its count,
    over the document's characters."""
    grams = _grams(doc.words, n)
    if not grams:
        return 0.0
    counts = Counter(grams)
    top_count = max(counts.values())
    if top_count < 2:
        return 0.0
    top = next(g for g, c in counts.items() if c == top_count)  # as most_common(1) picks
    return (sum(map(len, top)) + n - 1) * top_count / max(1, len(doc.text))


def duplicate_ngram(doc: Doc, n: int) -> float:
    """Characters in repeated word n-grams (greedy, non-overlapping) over the document's."""
    words = doc.words
    grams = _grams(words, n)
    if len(set(grams)) == len(grams):  # nothing repeats: the common case, decided in C
        return 0.0
    seen: set[tuple[str, ...]] = set()
    chars = i = 0
    while i < len(grams):
        g = grams[i]
        if g in seen:
            chars += sum(map(len, g))
            i += n
        else:
            seen.add(g)
            i += 1
    return chars / max(1, len(doc.text))
