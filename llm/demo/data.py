"""Demo stage `data`: the standard library's own sources → a cleaned, deduplicated corpus."""

from __future__ import annotations

import json
import pathlib

from llm.demo.context import Context

NAME = "data"
DESCRIPTION = ("the Python standard library's own sources → cleaned, deduplicated, "
               "tokenised corpus")


def run(ctx: Context) -> dict:
    """Write the stdlib corpus (decoded as Python decodes it) and prepare it."""
    import ml_collections

    from configs.data import data_section
    from llm.data import prepare as prepare_lib
    from llm.data.sources import iter_stdlib_sources, stdlib_corpus_dir

    corpus = ctx.workdir / "corpus"
    if not corpus.exists():
        root = stdlib_corpus_dir()
        tmp = ctx.workdir / "corpus.tmp"
        for path, text in iter_stdlib_sources(limit=ctx.files):
            target = tmp / pathlib.Path(path).relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text, encoding="utf-8")
        tmp.rename(corpus)
    data = data_section()
    with data.unlocked():
        data.inputs = str(corpus)
        data.output_dir = str(ctx.workdir / "prepared")
        data.tokenizer.vocab_size = 2048
        data.split.validation = 0.05
    data = ml_collections.ConfigDict(data)
    prepared = prepare_lib.prepare(data)
    report = json.loads((prepared / "report.json").read_text())
    return {"prepared": str(prepared), "report": report}


def headline(result: dict) -> str:
    """The table cell: documents read and kept, what was dropped, tokens per split."""
    report = result["report"]
    stages = {s["stage"]: s for s in report["stages"]}
    read = stages["read"]["documents_out"]
    kept = stages["decontaminate"]["documents_out"]
    dropped = stages["read"]["documents_in"] - kept
    tokens = {name: sum(v["tokens"] for v in streams.values())
              for name, streams in report["splits"].items()}
    return (f"{read} files read, {kept} kept ({dropped} dropped by quality filters, dedup "
            f"and decontamination); tokens: " + ", ".join(
                f"{name} {n:,}" for name, n in sorted(tokens.items()))
            + f"; vocabulary {report['tokenizer']['vocab_size']}")
