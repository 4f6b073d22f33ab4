"""With the `:web` thresholds, our Gopher filters keep and drop what datatrove's do.

datatrove stops at a document's first failing rule, so each rule runs alone on both sides
(datatrove's filter with every other rule switched off) and is compared on the sections of
`pydoc_data.topics` plus synthetic documents near each threshold. datatrove's English word
splitter is spaCy's (`spacy.blank('en')`, no model download); the test is skipped where
datatrove or spaCy is absent. Ours never imports either.
"""

import random

import pytest

from configs.data import get_config
from llm.data import clean

datatrove_gopher = pytest.importorskip("datatrove.pipeline.filters.gopher_quality_filter")
pytest.importorskip("spacy")
datatrove_repetition = pytest.importorskip(
    "datatrove.pipeline.filters.gopher_repetition_filter")
Document = pytest.importorskip("datatrove.data").Document

_QUALITY_OFF = dict(min_doc_words=None, max_doc_words=None, min_avg_word_length=None,
                    max_avg_word_length=None, max_symbol_word_ratio=None,
                    max_bullet_lines_ratio=None, max_ellipsis_lines_ratio=None,
                    max_non_alpha_words_ratio=None, min_stop_words=None)
_REPETITION_OFF = dict(dup_line_frac=None, dup_para_frac=None, dup_line_char_frac=None,
                       dup_para_char_frac=None, top_n_grams=(), dup_n_grams=())
# our filter names -> the one datatrove rule they implement (its thresholds = Gopher's)
RULES = {
    ("min_words",): ("quality", dict(min_doc_words=50)),
    ("max_words",): ("quality", dict(max_doc_words=100_000)),
    ("mean_word_length",): ("quality", dict(min_avg_word_length=3, max_avg_word_length=10)),
    ("hash_ratio", "ellipsis_ratio"): ("quality", dict(max_symbol_word_ratio=0.1)),
    ("bullet_lines",): ("quality", dict(max_bullet_lines_ratio=0.9)),
    ("ellipsis_lines",): ("quality", dict(max_ellipsis_lines_ratio=0.3)),
    ("alpha_words",): ("quality", dict(max_non_alpha_words_ratio=0.8)),
    ("stop_words",): ("quality", dict(min_stop_words=2)),
    ("duplicate_paragraphs",): ("repetition", dict(dup_para_frac=0.3)),
    ("duplicate_paragraph_chars",): ("repetition", dict(dup_para_char_frac=0.2)),
    ("duplicate_lines",): ("repetition", dict(dup_line_frac=0.3)),
    ("duplicate_line_chars",): ("repetition", dict(dup_line_char_frac=0.2)),
    **{(f"top_{n}gram",): ("repetition", dict(top_n_grams=((n, t),)))
       for n, t in ((2, 0.20), (3, 0.18), (4, 0.16))},
    **{(f"duplicate_{n}gram",): ("repetition", dict(dup_n_grams=((n, t),)))
       for n, t in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True)},
}


def _prose() -> list[str]:
    """Lines of English prose from the pydoc topics (no code, no tables)."""
    from pydoc_data.topics import topics

    lines = [ln.strip() for t in topics.values() for ln in t.splitlines()]
    return [ln for ln in lines if len(ln.split()) >= 8 and ln[0].isupper()
            and sum(c.isalpha() or c == " " for c in ln) > 0.9 * len(ln)]


def corpus() -> list[str]:
    """pydoc's topics and synthetic documents straddling each Gopher threshold."""
    from pydoc_data.topics import topics

    rng = random.Random(0)
    prose = _prose()
    docs = list(topics.values())
    for i in range(160):
        kind = i % 8
        body = rng.sample(prose, rng.randint(3, 14))
        if kind == 0:  # short documents around 50 words
            docs.append(" ".join(" ".join(body).split()[:rng.randint(40, 60)]) + ".")
            continue
        if kind == 1:  # repeated paragraphs
            paras = [" ".join(body[k:k + 2]) for k in range(0, len(body), 2)]
            paras += rng.choices(paras, k=rng.randint(0, len(paras)))
            docs.append("\n\n".join(paras))
        elif kind == 2:  # repeated lines
            docs.append("\n".join(body + rng.choices(body, k=rng.randint(0, len(body)))))
        elif kind == 3:  # hashes and ellipses
            words = " ".join(body).split()
            for _ in range(rng.randint(0, len(words) // 6)):
                words.insert(rng.randrange(len(words)), rng.choice(("#", "...", "#tag")))
            docs.append(" ".join(words))
        elif kind == 4:  # bullet and ellipsis lines
            docs.append("\n".join(("- " if rng.random() < 0.9 else "") + ln +
                                  ("..." if rng.random() < 0.3 else "") for ln in body))
        elif kind == 5:  # numbers and symbols: the alphabetic-word fraction
            words = " ".join(body).split()
            for _ in range(rng.randint(0, len(words) // 3)):
                words.insert(rng.randrange(len(words)), rng.choice(("42", "(", "=", "3.5")))
            docs.append(" ".join(words))
        elif kind == 6:  # repeated phrases: top and duplicate n-grams
            words = " ".join(body).split()
            phrase = words[:rng.randint(2, 10)]
            for _ in range(rng.randint(0, 8)):
                at = rng.randrange(len(words))
                words[at:at] = phrase
            docs.append(" ".join(words))
        else:  # no stop words; long or short words
            words = [w for w in " ".join(body).split()
                     if w.lower() not in ("the", "be", "to", "of", "and", "that")]
            if rng.random() < 0.5:
                words = [w * rng.randint(1, 3) for w in words]
            docs.append(" ".join(words))
    return docs


def _theirs(group: str, kwargs: dict):
    if group == "quality":
        return datatrove_gopher.GopherQualityFilter(**{**_QUALITY_OFF, **kwargs})
    return datatrove_repetition.GopherRepetitionFilter(**{**_REPETITION_OFF, **kwargs})


@pytest.mark.slow
def test_gopher_filters_agree_with_datatrove_rule_by_rule():
    docs = corpus()
    web = get_config("web").clean.filters
    ours, theirs = {}, {}
    for names, (group, kwargs) in RULES.items():
        ours[names] = web.copy_and_resolve_references()
        ours[names].enabled = ",".join(names)
        theirs[names] = _theirs(group, kwargs)
    whole_ours = web.copy_and_resolve_references()
    whole_ours.enabled = ",".join(n for names in RULES for n in names)
    whole_theirs = (datatrove_gopher.GopherQualityFilter(),
                    datatrove_repetition.GopherRepetitionFilter())
    counts = {names: dict.fromkeys([(a, b) for a in (1, 0) for b in (1, 0)], 0)
              for names in (*RULES, ("all Gopher rules",))}
    for i, text in enumerate(docs):  # doc-major: datatrove caches the last texts' words
        for names in RULES:
            keep = clean.clean_text(text, ours[names])[1] is None, \
                theirs[names].filter(Document(text=text, id=str(i))) is True
            counts[names][keep] += 1
        keep = clean.clean_text(text, whole_ours)[1] is None, \
            all(t.filter(Document(text=text, id=str(i))) is True for t in whole_theirs)
        counts[("all Gopher rules",)][keep] += 1
    table, worst = [], 1.0
    for names, c in counts.items():
        agree = (c[1, 1] + c[0, 0]) / len(docs)
        worst = min(worst, agree)
        table.append(f"{'+'.join(names):<26} both keep {c[1, 1]:>4}  both drop {c[0, 0]:>4}  "
                     f"only ours keeps {c[1, 0]:>3}  only datatrove keeps {c[0, 1]:>3}  "
                     f"agree {agree:.3f}")
    print(f"\n{len(docs)} documents\n" + "\n".join(table))
    assert worst >= 0.95, "\n".join(table)
