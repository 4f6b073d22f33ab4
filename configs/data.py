"""The data-preparation section, shared by scripts/prepare_data.py and every task (`config.data`).

    python scripts/prepare_data.py --config=configs/data.py:web \
        --config.inputs=corpus/,extra.jsonl --config.output_dir=/tmp/prepared

`:code` (the default) keeps the loose filters for source code, `:web` applies Gopher's and
C4's published filters, `:fineweb` adds FineWeb's (filters_section).

Every key is declared here once; code reads `config.<key>` directly, never `.get(k, default)`.
"""

import ml_collections

PRESETS = ("code", "web", "fineweb")
_GOPHER_QUALITY = ("min_words,max_words,mean_word_length,hash_ratio,ellipsis_ratio,bullet_lines,"
                   "ellipsis_lines,alpha_words,stop_words")
_GOPHER_REPETITION = ("duplicate_paragraphs,duplicate_paragraph_chars,duplicate_lines,"
                      "duplicate_line_chars,top_2gram,top_3gram,top_4gram," +
                      ",".join(f"duplicate_{n}gram" for n in range(5, 11)))
_C4 = ("line_long_word,line_punct,line_words,line_javascript,line_policy,lorem_ipsum,"
       "curly_bracket,min_sentences,bad_words")
_FINEWEB = "punct_lines,short_lines,line_char_duplicates,list_like"


def filters_section(preset: str = "code") -> ml_collections.ConfigDict:
    """`clean.filters`: every threshold, and which filters a preset turns on (llm/data/clean.py).

    code (the default): loose Gopher-style limits for source code, the demo's corpus.
    web: Gopher quality + repetition and C4, at their published thresholds.
    fineweb: web plus FineWeb's filters, with C4's per-line punctuation rule off (as FineWeb).
    """
    if preset not in PRESETS:
        raise ValueError(f"configs/data.py: unknown preset {preset!r}; expected one of "
                         f"{', '.join(PRESETS)}")
    f = ml_collections.ConfigDict()
    # Gopher quality (Rae et al. 2021, A1.1); the published thresholds:
    f.min_words, f.max_words = 50, 100_000  # content words
    f.min_mean_word_length, f.max_mean_word_length = 3.0, 10.0
    f.max_hash_ratio = 0.1  # '#' per word
    f.max_ellipsis_ratio = 0.1  # '...' per word
    f.max_bullet_line_fraction = 0.9
    f.max_ellipsis_line_fraction = 0.3
    f.min_alpha_word_fraction = 0.8
    f.min_stop_words = 2
    f.stop_words = "the,be,to,of,and,that,have,with"
    f.max_digit_ratio = 0.5  # ours: digits per character
    # Gopher repetition (table A1)
    f.max_duplicate_line_fraction = 0.3
    f.max_duplicate_paragraph_fraction = 0.3
    f.max_duplicate_line_char_fraction = 0.2
    f.max_duplicate_paragraph_char_fraction = 0.2
    f.max_top_2gram_fraction, f.max_top_3gram_fraction, f.max_top_4gram_fraction = \
        0.20, 0.18, 0.16
    for n, limit in zip(range(5, 11), (0.15, 0.14, 0.13, 0.12, 0.11, 0.10), strict=True):
        f[f"max_duplicate_{n}gram_fraction"] = limit
    # C4 (Raffel et al. 2020); the bad-words list is the user's own file, none is shipped
    f.max_word_length = 1000  # a line with a longer word goes
    f.min_line_words = 3
    f.min_sentences = 5
    f.bad_words_file = ""  # one word or phrase per line; '' = no bad-words filter
    # FineWeb (Penedo et al. 2024)
    f.min_punct_line_fraction = 0.12
    f.max_short_line_fraction, f.short_line_length = 0.67, 30
    f.max_line_char_duplicates = 0.01
    f.max_newlines_per_word = 0.3
    if preset == "web":
        f.enabled = ",".join((_GOPHER_QUALITY, _GOPHER_REPETITION, _C4))
    elif preset == "fineweb":
        f.enabled = ",".join((_GOPHER_QUALITY, _GOPHER_REPETITION,
                              _C4.replace("line_punct,", ""), _FINEWEB))
    else:  # code: wider words, repeated lines and '#' comments are normal in source
        f.min_words, f.max_words = 5, 200_000
        f.min_mean_word_length, f.max_mean_word_length = 2.0, 12.0
        f.max_hash_ratio = f.max_ellipsis_ratio = 0.3
        f.max_duplicate_line_char_fraction = 0.5
        f.max_duplicate_paragraph_char_fraction = 0.5
        f.max_duplicate_5gram_fraction = 0.6
        f.enabled = ("min_words,max_words,mean_word_length,hash_ratio,ellipsis_ratio,"
                     "digit_ratio,bullet_lines,ellipsis_lines,duplicate_line_chars,"
                     "duplicate_paragraph_chars,top_2gram,duplicate_5gram")
    return f


def data_section(preset: str = "code") -> ml_collections.ConfigDict:
    """The `data` section: inputs, executor, clean/dedup/decontaminate/split/tokenizer/mixture;
    `preset` picks the quality filters (filters_section)."""
    c = ml_collections.ConfigDict()
    # Raw inputs or an already prepared directory (training configs set this one).
    c.path = ""
    c.inputs = ""  # comma-separated files/directories (scripts/prepare_data.py sets this one)
    c.output_dir = ""  # where prepared data goes ('' = <workdir>/data when training)
    c.executor = "local"  # 'local' (process pool) | 'ray'
    c.num_workers = 2  # processes for the local executor; 0 or 1 runs inline
    c.num_shards = 0  # pipeline/record shards; 0 = max(1, num_workers)
    c.text_field = "text"  # JSONL/Parquet field holding a plain document
    c.skip_bad_records = False  # count malformed records in report.json instead of failing
    c.overwrite = False  # allow replacing an output directory prepared with other settings
    c.seed = 0

    c.clean = ml_collections.ConfigDict()
    c.clean.enabled = True
    c.clean.fix_unicode = True  # ftfy mojibake repair when installed, then NFC
    c.clean.normalization = "NFC"
    c.clean.strip_control = True
    c.clean.normalize_whitespace = True  # trailing spaces, >2 blank lines, CRLF
    c.clean.filters = filters_section(preset)

    c.dedup = ml_collections.ConfigDict()
    c.dedup.exact = True
    c.dedup.near = True
    c.dedup.threshold = 0.8  # Jaccard at which a pair counts as a near duplicate
    c.dedup.ngram = 5
    c.dedup.ngram_unit = "word"  # 'word' | 'char'
    c.dedup.num_perm = 128
    c.dedup.bands = 0  # 0 = choose bands/rows for recall >= dedup.target_recall at threshold
    c.dedup.rows = 0
    c.dedup.target_recall = 0.97
    c.dedup.verify = "estimate"  # 'estimate' (MinHash agreement) | 'jaccard' (exact shingles)
    c.dedup.max_bucket = 64  # candidate pairs per bucket beyond which neighbours only are paired

    c.decontaminate = ml_collections.ConfigDict()
    c.decontaminate.enabled = True
    c.decontaminate.ngram = 13
    c.decontaminate.action = "drop"  # 'drop' | 'report'
    c.decontaminate.eval_files = ""  # comma-separated files whose n-grams must not be trained on

    c.split = ml_collections.ConfigDict()
    c.split.validation = 0.01
    c.split.test = 0.0

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # reuse an existing tokenizer directory instead of training
    c.tokenizer.vocab_size = 4096
    c.tokenizer.model_type = "bpe"
    c.tokenizer.byte_fallback = True
    c.tokenizer.max_sentences = 200_000
    c.tokenizer.add_bos = True
    c.tokenizer.add_eos = True
    # A Jinja chat template file (Hugging Face semantics) that sets or overrides the tokenizer's
    # own: base models have none; tokenizers trained here default to the role-token layout.
    c.chat_template = ""

    c.mixture = ml_collections.ConfigDict()
    # 'source=weight,...' where source is a substring of an input path; weight 2.0 repeats
    # every training document twice, 0.5 keeps half (chosen by document hash).
    c.mixture.weights = ""
    return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The data section as a whole config, for scripts/prepare_data.py; `arg` is a preset
    (`configs/data.py:web`), `code` when not given."""
    names = [a.strip() for a in (arg or "").split(",") if a.strip()]
    if len(names) > 1 or (names and names[0] not in PRESETS):
        raise ValueError(f"configs/data.py: unknown variant {arg!r}; expected one preset of "
                         f"{', '.join(PRESETS)}")
    return data_section(names[0] if names else "code")
