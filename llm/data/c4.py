"""C4's line-level cleaning (Raffel et al. 2020, section 2.2) and FineWeb's extra filters.

C4 rewrites a document line by line, in the order of its reference code (TFDS
`c4_utils.clean_page`, which datatrove's C4QualityFilter repeats): a **line** is a
`str.splitlines()` line with its spaces stripped, its **words** the whitespace-separated
chunks. A line is dropped when it has a word over `max_word_length` characters
(`line_long_word`), does not end in `. ? ! " '` or ends in `...` (`line_punct`; Wikipedia
citation marks like `[12]` are removed first), has fewer than `min_line_words` words
(`line_words`), mentions javascript (`line_javascript`) or a terms-of-use/cookie/privacy
phrase (`line_policy`). The whole document is dropped when a line that got that far says
"lorem ipsum" (`lorem_ipsum`) or holds `{` (`curly_bracket`), when the kept lines hold fewer
than `min_sentences` sentences (`min_sentences`), or when the rewritten text holds a word
or phrase of the user's bad-words file (`bad_words`; C4's list is not shipped). A
**sentence** ends at a run of `. ! ? …` followed by a space or the line end, not after a
single letter (`e.g.`, `J. Smith`), approximating spaCy's sentencizer that datatrove calls.

FineWeb (Penedo et al. 2024; datatrove's FineWebQualityFilter), on non-blank lines of the
rewritten text: the fraction ending in terminal punctuation (`punct_lines`; C4's line rule
is off in FineWeb), the fraction of at most `short_line_length` characters
(`short_lines`), characters in repeated lines over the characters that are not newlines
(`line_char_duplicates`), and newlines per word (`list_like`).
"""

from __future__ import annotations

import functools
import pathlib
import re

from llm.data import DataError
from llm.data.gopher import repeats
from llm.data.words import Doc

LINE_FILTERS = ("line_long_word", "line_punct", "line_words", "line_javascript", "line_policy")
DOC_FILTERS = ("lorem_ipsum", "curly_bracket", "min_sentences")
_END = (".", "?", "!", '"', "'")
_CITATION = re.compile(r"\[\d*]|\[edit]|\[citation needed]")
_POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies",
           "use cookies")
_SENTENCE_END = re.compile(r"(?<![\s.][^\W\d_])(?:[.!?]|…)+[\"'’”)\]]*(?=\s)")
TERMINAL = (".", "!", "?", "…", "‼", "⁇", "⁈", "⁉", "。", "！", "？", "｡", "．", "﹒", "﹖",
            "﹗", "؟", "۔", "؞", "।", "॥", "։", "።", "፧", "፨", "܀", "܁", "܂", "߹", "၊",
            "။", "᙮", "᠃", "᠉", "꓿", "꘎", "꛳", "꛷")


def sentences(line: str) -> int:
    """Sentences in one kept line (which ends in terminal punctuation, so at least one)."""
    return len(_SENTENCE_END.findall(line)) + 1


def clean_lines(text: str, f, enabled: set[str],
                dropped: dict) -> tuple[str, tuple[str, float, float] | None]:
    """(rewritten text, None) or (text, (filter, value, threshold)) when the document goes.

    Lines removed are counted into `dropped` by filter name.
    """
    kept, n_sentences = [], 0
    for line in text.splitlines():
        line = line.strip()
        words = line.split()
        reason = None
        if "line_long_word" in enabled and any(len(w) > f.max_word_length for w in words):
            reason = "line_long_word"
        else:
            line = _CITATION.sub("", line)
            lower = line.lower()
            if "line_punct" in enabled and (not line.endswith(_END) or line.endswith("...")):
                reason = "line_punct"
            elif "line_words" in enabled and len(words) < f.min_line_words:
                reason = "line_words"
            elif "lorem_ipsum" in enabled and "lorem ipsum" in lower:
                return text, ("lorem_ipsum", 1.0, 0.0)
            elif "line_javascript" in enabled and "javascript" in lower:
                reason = "line_javascript"
            elif "curly_bracket" in enabled and "{" in line:
                return text, ("curly_bracket", 1.0, 0.0)
            elif "line_policy" in enabled and any(p in lower for p in _POLICY):
                reason = "line_policy"
        if reason is not None:
            if line:
                dropped[reason] = dropped.get(reason, 0) + 1
            continue
        if line:
            n_sentences += sentences(line)
            kept.append(line)
    if "min_sentences" in enabled and n_sentences < f.min_sentences:
        return text, ("min_sentences", float(n_sentences), float(f.min_sentences))
    return "\n".join(kept).strip(), None


@functools.lru_cache(maxsize=4)
def bad_words_pattern(path: str) -> re.Pattern:
    """A case-insensitive pattern for the words/phrases of a bad-words file, one a line."""
    p = pathlib.Path(path).expanduser()
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"clean.filters.bad_words_file: cannot read it ({e}); expected a UTF-8 "
                        "text file with one word or phrase per line", str(p)) from None
    words = sorted({w.strip().lower() for w in lines if w.strip()}, key=len, reverse=True)
    if not words:
        raise DataError("clean.filters.bad_words_file holds no words; expected one word or "
                        "phrase per line", str(p))
    # C4's reference code: the word between non-word characters (or the text's ends)
    return re.compile(r"(?:\W|^)(?:" + "|".join(map(re.escape, words)) + r")(?:\W|$)",
                      re.IGNORECASE)


def bad_words(doc: Doc, path: str) -> float:
    """1 when the text holds a word or phrase of the bad-words file, else 0."""
    return float(bad_words_pattern(path).search(doc.text) is not None)


def punct_lines(doc: Doc) -> float:
    """Fraction of non-blank lines ending in terminal punctuation (FineWeb)."""
    lines = doc.nonblank_lines
    return sum(ln.endswith(TERMINAL) for ln in lines) / len(lines) if lines else 0.0


def short_lines(doc: Doc, length: int) -> float:
    """Fraction of non-blank lines of at most `length` characters (FineWeb)."""
    lines = doc.nonblank_lines
    return sum(len(ln) <= length for ln in lines) / len(lines) if lines else 0.0


def line_char_duplicates(doc: Doc) -> float:
    """Characters in repeat copies of non-blank lines over the non-newline characters."""
    return repeats(doc.nonblank_lines)[1] / max(1, len(doc.text) - doc.text.count("\n"))


def list_like(doc: Doc) -> float:
    """Newlines per word (FineWeb's list-like documents)."""
    return doc.text.count("\n") / max(1, len(doc.words))
