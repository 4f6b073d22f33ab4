"""Each quality filter keeps a hand-made document just inside its threshold and drops one
just past it; the word definition; C4's line rewriting; preset and setting checks."""

import itertools
import json

import pytest

from configs.data import get_config
from llm.data import DataError, clean
from llm.data.words import split_words

_FILLER = ("".join(p) for p in itertools.product("bcdfghjklmnpqrstvwxz", repeat=4))
FILLERS = list(itertools.islice(_FILLER, 20_000))  # distinct 4-letter words, none with 'a'
PHRASE = ["alpha", "amber", "apple", "arrow", "atlas", "azure", "acorn", "angle", "ankle",
          "aroma"]  # repeated words: none is a filler


def _words(n: int, start: int = 0) -> list[str]:
    return FILLERS[start:start + n]


def _run(name: str, text: str, preset: str = "web", **settings):
    """(kept?, text after cleaning, lines removed) with only filter `name` on."""
    f = get_config(preset).clean.filters
    f.enabled = name
    for key, value in settings.items():
        f[key] = value
    lines: dict = {}
    out, problem = clean.clean_text(text, f, lines)
    if problem is not None:
        assert problem[0] == name
    return problem is None, out, lines


def _lines(n: int, start: int = 0, end: str = ".") -> list[str]:
    """n distinct lines of three filler words."""
    return [" ".join(_words(3, start + 3 * i)) + end for i in range(n)]


def _with_repeated_ngram(n: int, copies: int, limit: float, spaces: bool) -> tuple[str, str]:
    """(inside, past): `copies` of an n-word phrase among fillers, the fillers' count chosen
    so the phrase's characters (`spaces`: with its n - 1 joining spaces; else repeat copies
    only, without spaces) over the text's cross `limit` between the two."""
    phrase = PHRASE[:n]
    phrase_chars = sum(map(len, phrase))

    def text(m: int) -> tuple[str, float]:
        tokens: list[str] = []
        fillers = iter(_words(m))
        for _ in range(copies):
            tokens += phrase + [next(fillers)]
        tokens += list(fillers)
        length = sum(map(len, tokens)) + len(tokens) - 1
        counted = (phrase_chars + n - 1) * copies if spaces else phrase_chars * (copies - 1)
        return " ".join(tokens), counted / length

    m = copies
    while text(m)[1] > limit:
        m += 1
    inside, past = text(m), text(m - 1)
    assert past[1] > limit >= inside[1] and past[1] - limit < 0.02
    return inside[0], past[0]


def _cases():
    """(filter, preset, inside, past)."""
    w = " ".join
    yield "min_words", "web", w(_words(50)) + " .", w(_words(49)) + " . ; --"
    yield "max_words", "web", w(FILLERS * 5), w(FILLERS * 5 + ["extra"])
    yield "mean_word_length", "web", w(["abcdefghij"] * 60), w(["abcdefghij"] * 59 + ["a" * 11])
    yield "mean_word_length", "web", w(["abc"] * 60), w(["abc"] * 59 + ["ab"])
    yield "hash_ratio", "web", w(_words(90) + ["#"] * 10), w(_words(89) + ["#"] * 11)
    yield "ellipsis_ratio", "web", w(_words(90) + ["..."] * 10), w(_words(89) + ["..."] * 11)
    body = _lines(100)
    yield ("bullet_lines", "web", "\n".join("- " + ln if i < 90 else ln for i, ln in
                                            enumerate(body)),
           "\n".join("• " + ln if i < 91 else ln for i, ln in enumerate(body)))
    yield ("ellipsis_lines", "web", "\n".join(ln + ".." if i < 30 else ln
                                              for i, ln in enumerate(body)),
           "\n".join(ln + "…" if i < 31 else ln for i, ln in enumerate(body)))
    yield "alpha_words", "web", w(_words(80) + ["42"] * 20), w(_words(79) + ["4.2"] * 21)
    yield "stop_words", "web", w(_words(60) + ["the", "of"]), w(_words(60) + ["the"] * 5)
    yield "digit_ratio", "code", "11111 aaaa", "111111 aaa"
    paras = [w(_words(20, 20 * i)) for i in range(70)]
    yield ("duplicate_paragraphs", "web", "\n\n".join(paras + paras[:30]),
           "\n\n".join(paras[:69] + paras[:31]))
    # 40 paragraphs of 9 characters joined by blank lines: 40 * 9 + 39 * 2 = 438 characters;
    # 9 repeat copies = 81 (0.185), 10 = 90 (0.205)
    para_lines = [w(_words(2, 2 * i)) for i in range(40)]
    yield ("duplicate_paragraph_chars", "web", "\n\n".join(para_lines[:31] + para_lines[:9]),
           "\n\n".join(para_lines[:30] + para_lines[:10]))
    yield ("duplicate_lines", "web", "\n".join(body[:70] + body[:30]),
           "\n".join(body[:69] + body[:31]))
    # 50 lines of 9 characters: 499 characters; 11 repeats = 99 (0.198), 12 = 108 (0.216)
    short = [w(_words(2, 2 * i)) for i in range(50)]
    yield ("duplicate_line_chars", "web", "\n".join(short[:39] + short[:11]),
           "\n".join(short[:38] + short[:12]))
    for n, limit in ((2, 0.20), (3, 0.18), (4, 0.16)):
        yield (f"top_{n}gram", "web", *_with_repeated_ngram(n, 6, limit, spaces=True))
    for n, limit in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True):
        yield (f"duplicate_{n}gram", "web", *_with_repeated_ngram(n, 4, limit, spaces=False))
    # FineWeb, on non-blank lines
    yield ("punct_lines", "fineweb", "\n".join(_lines(12) + _lines(88, 100, end="")),
           "\n".join(_lines(11) + _lines(89, 100, end="")))
    long_lines = [ln + " " + w(_words(5, 5000 + 5 * i)) for i, ln in enumerate(_lines(100))]
    yield ("short_lines", "fineweb", "\n".join(body[:67] + long_lines[67:]),
           "\n".join(body[:68] + long_lines[68:]))
    # 100 distinct lines of 15 characters and one repeat: 15 of 1,515 characters (0.0099);
    # 98 lines and a 16-character line twice: 16 of 1,502 (0.0107)
    yield ("line_char_duplicates", "fineweb", "\n".join(body + body[:1]),
           "\n".join(body[:98] + [body[98] + "x", body[98] + "x"]))
    # newlines per word: 9 newlines among 30 words (0.3), among 29 (0.31)
    yield ("list_like", "fineweb", "\n".join(w(_words(3, 3 * i)) for i in range(10)),
           "\n".join(w(_words(3 if i else 2, 3 * i)) for i in range(10)))
    sentences = [f"{w(_words(3, 3 * i))}." for i in range(4)]  # 'e.g.' ends none
    yield ("min_sentences", "web", w(sentences + ["Also e.g. this one."]),
           w(sentences[:3] + ["Not e.g. this one."]))
    yield "lorem_ipsum", "web", "Lorem dolor ipsum sit amet.", "Some lorem ipsum dolor sit."
    yield "curly_bracket", "web", "Call it with (x) here.", "Call it with {x} here."


@pytest.mark.parametrize("name, preset, inside, past",
                         list(_cases()), ids=lambda v: v if isinstance(v, str) and
                         len(v) < 30 else "")
def test_filter_keeps_inside_and_drops_past_its_threshold(name, preset, inside, past):
    assert _run(name, inside, preset)[0], f"{name} dropped the document inside its threshold"
    assert not _run(name, past, preset)[0], f"{name} kept the document past its threshold"


@pytest.mark.parametrize("name, kept, dropped", ids=lambda v: v[:24], argvalues=[
    ("line_long_word", "x" * 1000 + " is long.", "x" * 1001 + " is too long."),
    ("line_punct", "This line ends well.", "This line trails off..."),
    ("line_punct", 'A quoted line ends "here."', "No punctuation at the end"),
    ("line_words", "Three words here.", "Two words."),
    ("line_javascript", "Java scripts are fine.", "Please enable JavaScript to continue."),
    ("line_policy", "Read our privacy notes.", "Read our Privacy Policy today."),
])
def test_c4_line_rules_rewrite_lines_not_documents(name, kept, dropped):
    other = "A line that every rule keeps."
    ok, text, lines = _run(name, f"{other}\n{kept}\n{dropped}\n")
    assert ok and text == f"{other}\n{kept}" and lines == {name: 1}


def test_c4_citations_are_removed_and_bad_words_come_from_the_users_file(tmp_path):
    assert _run("line_punct", "Citations go.[12]\nEdit marks too.[edit]\n")[1] == \
        "Citations go.\nEdit marks too."
    words = tmp_path / "bad.txt"
    words.write_text("badword\ntwo words\n")
    f = dict(bad_words_file=str(words))
    assert _run("bad_words", "A badwords line is fine.", **f)[0]
    assert not _run("bad_words", "One BadWord here.", **f)[0]
    assert not _run("bad_words", "Say two words.", **f)[0]
    assert _run("bad_words", "Without a file nothing is dropped: badword.")[0]


def test_words_follow_spacy_english_splitting():
    assert split_words("Don't split x.attribute, e.g. (well-known) UTF-8 3.14... ::= --+--") \
        == ["Do", "n't", "split", "x.attribute", ",", "e.g.", "(", "well", "-", "known", ")",
            "UTF-8", "3.14", "...", ":", ":", "=", "--+--"]
    assert split_words("plain words only") == ["plain", "words", "only"]


def test_presets_and_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="unknown variant 'webb'"):
        get_config("webb")
    from configs.pretrain import get_config as pretrain

    assert pretrain("model=tiny,data=fineweb").data.clean.filters.enabled == \
        get_config("fineweb").clean.filters.enabled
    with pytest.raises(ValueError, match="data=<code|web|fineweb>"):
        pretrain("model=tiny,data=fine")
    c = get_config("web").clean
    c.filters.enabled += ",symbol_ratio"
    with pytest.raises(DataError, match="unknown filter 'symbol_ratio'"):
        clean.check_config(c)
    c = get_config("web").clean
    c.filters.max_top_2gram_fraction = -0.1
    with pytest.raises(DataError, match="max_top_2gram_fraction must be >= 0"):
        clean.check_config(c)
    c = get_config("web").clean
    c.filters.bad_words_file = str(tmp_path / "missing.txt")
    with pytest.raises(DataError, match="bad_words_file: cannot read it"):
        clean.check_config(c)
    c = get_config("code").clean
    (tmp_path / "w.txt").write_text("x\n")
    c.filters.bad_words_file = str(tmp_path / "w.txt")
    with pytest.raises(DataError, match="bad_words filter is not in"):
        clean.check_config(c)


def test_web_preset_pipeline_writes_rows_and_counts_and_leaves_chat_alone(tmp_path):
    from llm.data.prepare import prepare

    prose = " ".join(f"The {a} of {b} and {c}." for a, b, c in
                     zip(FILLERS[:40], FILLERS[40:80], FILLERS[80:120], strict=True))
    rows = [{"text": prose + "\nmenu\nhome\nPlease enable javascript to see it."},
            {"text": "too short"},
            {"messages": [{"role": "user", "content": "menu\nhome"},
                          {"role": "assistant", "content": "no punctuation"}]}]
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    c = get_config("web")
    c.inputs, c.output_dir, c.num_workers = str(raw), str(tmp_path / "out"), 0
    c.tokenizer.vocab_size, c.split.validation = 300, 0.0
    c.decontaminate.enabled = False
    out = prepare(c)
    removed = [json.loads(x) for x in (out / "removed.jsonl").read_text().splitlines()]
    assert removed == [{"source": str(raw), "line": 2, "stage": "clean",
                        "filter": "min_words", "value": 2.0, "threshold": 50.0}]
    report = json.loads((out / "report.json").read_text())
    assert report["removed"] == {"clean": {"min_words": 1}}
    assert report["stages"][1]["lines_removed"] == {"line_punct": 2, "line_javascript": 1}
    spill = [json.loads(x) for x in (out / "_work" / "scan-0.jsonl").read_text().splitlines()]
    assert [r["fields"] for r in spill] == [{"text": prose}, rows[2]]
