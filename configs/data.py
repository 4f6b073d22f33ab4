"""The data-preparation section, shared by scripts/prepare_data.py and every task (`config.data`).

    python scripts/prepare_data.py --config=configs/data.py \
        --config.inputs=corpus/,extra.jsonl --config.output_dir=/tmp/prepared

Every key is declared here once; code reads `config.<key>` directly, never `.get(k, default)`.
"""

import ml_collections


def data_section() -> ml_collections.ConfigDict:
    """The `data` section: inputs, executor, clean/dedup/decontaminate/split/tokenizer/mixture."""
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
    c.clean.filters = ml_collections.ConfigDict()
    f = c.clean.filters
    f.min_words, f.max_words = 5, 200_000  # Gopher: 50..100k; our demo docs are short
    f.min_mean_word_length, f.max_mean_word_length = 2.0, 12.0  # Gopher: 3..10 (code is wider)
    f.max_symbol_ratio = 0.3  # '#' and '...' per word (Gopher 0.1; code uses '#')
    f.max_digit_ratio = 0.5  # digits per character
    f.min_alpha_word_fraction = 0.0  # Gopher: 0.8 of words with a letter (off: code)
    f.min_punct_line_fraction = 0.0  # C4: lines ending in terminal punctuation (off: code)
    f.max_bullet_line_fraction = 0.9  # Gopher
    f.max_ellipsis_line_fraction = 0.3  # Gopher
    f.max_duplicate_line_fraction = 0.5  # Gopher 0.3 (code repeats lines more)
    f.max_duplicate_paragraph_fraction = 0.5  # Gopher 0.3
    f.max_top_2gram_fraction = 0.2  # Gopher
    f.max_duplicate_5gram_fraction = 0.6  # Gopher 0.15 (loose for code)
    f.enabled = "min_words,max_words,mean_word_length,symbol_ratio,digit_ratio,alpha_words," \
        "punct_lines,bullet_lines,ellipsis_lines,duplicate_lines,duplicate_paragraphs," \
        "top_2gram,duplicate_5gram"

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

    c.mixture = ml_collections.ConfigDict()
    # 'source=weight,...' where source is a substring of an input path; weight 2.0 repeats
    # every training document twice, 0.5 keeps half (chosen by document hash).
    c.mixture.weights = ""
    return c


def get_config(arg=None) -> ml_collections.ConfigDict:
    """The data section as a whole config, for scripts/prepare_data.py."""
    del arg
    return data_section()
