"""`prepare(data_config)`: raw inputs → a prepared directory the loaders read.

    <output_dir>/
      records/<split>/<stream>-<k>.*   tokenised shards (see records.py)
      tokenizer/                       trained here, or copied from data.tokenizer.path
      meta.json                        tokenizer, dtype, counts per split and stream, source hashes
      report.json                      documents/tokens in and out of every stage, drops per filter
      removed.jsonl                    one row per dropped document, with the reason
      manifest.json                    input hashes + settings: a rerun with the same ones reuses
                                       finished stages; anything else needs data.overwrite=True

Stages run on one `executors.Executor` (inline, a local process pool or Ray); see stages.py.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import ml_collections
import numpy as np
import xxhash

from llm.data import DataError, clean, report, stages
from llm.data.executors import Executor
from llm.data.records import token_dtype
from llm.data.sources import list_input_files, splits_by_bytes
from llm.data.split import check_fractions
from llm.data.tokenizer import Tokenizer, train_tokenizer

MANIFEST = "manifest.json"
# Settings that change how, not what, is produced: a rerun may change them freely.
_NOT_IN_MANIFEST = ("path", "output_dir", "overwrite", "executor", "num_workers")


def is_prepared(path: str | pathlib.Path) -> bool:
    """True when `path` is a finished prepared directory (meta.json and tokenizer present)."""
    p = pathlib.Path(path)
    return p.is_dir() and (p / "meta.json").exists() and (p / "tokenizer").is_dir()


def _manifest(cfg: ml_collections.ConfigDict, files: list[pathlib.Path]) -> dict:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_MANIFEST}
    inputs = []
    for f in files:
        h = xxhash.xxh3_128()
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
        inputs.append({"path": str(f), "bytes": f.stat().st_size, "xxh3_128": h.hexdigest()})
    return {"settings": settings, "inputs": inputs}


def _claim_output(out: pathlib.Path, manifest: dict, overwrite: bool) -> None:
    """Create `out`, or accept it if it holds the same manifest; never silently replace it."""
    if out.exists() and any(out.iterdir()):
        old = out / MANIFEST
        same = old.exists() and json.loads(old.read_text()) == manifest
        if not same:
            if not overwrite:
                raise DataError("output directory exists and was prepared from other inputs "
                                "or settings (or is not a prepared directory); choose another "
                                "data.output_dir or set data.overwrite=True", str(out))
            if (out / MANIFEST).exists() or (out / "meta.json").exists():
                shutil.rmtree(out)
            else:
                raise DataError("refusing to overwrite a directory that is not a prepared "
                                "dataset", str(out))
    (out / stages.WORK).mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True))


def _stage(out: pathlib.Path, name: str, compute):
    """Run `compute()` unless a previous run with the same manifest finished this stage."""
    done = out / stages.WORK / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    result = compute()
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(done)
    return result


def prepare(data_config: ml_collections.ConfigDict) -> pathlib.Path:
    """Run the whole pipeline for `data_config` (configs/data.py); returns the output dir."""
    c = data_config
    inputs = c.inputs or c.path
    if not c.output_dir:
        raise DataError("data.output_dir is empty: say where prepared data should go")
    check_fractions(c.split.validation, c.split.test)
    clean.check_filter_names(c.clean.filters.enabled)
    out = pathlib.Path(c.output_dir)
    files = list_input_files(inputs)
    if out.resolve() in [f.resolve() for f in files] or any(
            out.resolve() in f.resolve().parents for f in files):
        raise DataError("output directory must not contain the inputs", str(out))
    manifest = _manifest(c, files)
    _claim_output(out, manifest, c.overwrite)
    if is_prepared(out):
        return out
    with Executor(c.executor, c.num_workers) as ex:  # one worker pool for every stage
        _run_stages(c, out, files, manifest, ex)
    return out


def _run_stages(c: ml_collections.ConfigDict, out: pathlib.Path, files: list[pathlib.Path],
                manifest: dict, ex: Executor) -> None:
    """scan → dedup → decontaminate → tokenizer → tokenise → report, each reused if done."""
    inputs = c.inputs or c.path
    cfg = c.to_dict()
    names = [str(f) for f in files]
    k = c.num_shards if c.num_shards > 0 else max(1, c.num_workers)
    run = ex.run

    def scan_stage():
        before = [{} for _ in range(k)]
        if k > 1 and any(splits_by_bytes(f) for f in files):
            before = stages.lines_before(run(stages.count_lines,
                                             [(names, s, k) for s in range(k)]))
        return run(stages.scan_shard, [(cfg, names, s, k, str(out), before[s])
                                       for s in range(k)])

    scans = _stage(out, "scan", scan_stage)
    documents = sum(s["counts"]["documents"] for s in scans)
    bad = {}
    for s in scans:
        for reason, n in s["bad"].items():
            bad[reason] = bad.get(reason, 0) + n
    if documents == 0:
        raise DataError("inputs hold no documents" + (f" (skipped bad records: {bad})" if bad
                                                      else ""), inputs)

    def dedup_stage():
        dropped, st = stages.find_duplicates(cfg, str(out), k)
        return {"dropped": {str(o): v for o, v in dropped.items()}, "stats": st}

    dd = _stage(out, "dedup", dedup_stage)
    dropped = {int(o): tuple(v) for o, v in dd["dropped"].items()}

    def decontaminate_stage():
        if not c.decontaminate.enabled:
            return []
        grams = run(stages.held_out_ngrams, [(cfg, str(out), s, dropped) for s in range(k)])
        extra = _eval_file_ngrams(c)
        ngrams = np.unique(np.concatenate(grams + [extra]))
        if len(ngrams) == 0:
            return []
        hits = run(stages.contaminated, [(cfg, str(out), s, dropped, ngrams) for s in range(k)])
        return sorted(o for h in hits for o in h)

    contaminated = _stage(out, "decontaminate", decontaminate_stage)
    if c.decontaminate.action == "drop":
        dropped.update({o: ("contamination", None) for o in contaminated})
    elif c.decontaminate.action != "report":
        raise DataError(f"decontaminate.action must be 'drop' or 'report', got "
                        f"{c.decontaminate.action!r}")

    tok_dir = out / "tokenizer"
    if not (tok_dir / "tokenizer_config.json").exists():
        if c.tokenizer.path:
            Tokenizer.load(c.tokenizer.path).save(tok_dir)
        else:
            texts = (stages.content_key(r["kind"], r["fields"]) for s in range(k)
                     for r in stages.iter_spill(str(out), s)
                     if r["split"] == "train" and r["o"] not in dropped)
            texts = _nonempty(texts, "no training documents are left after cleaning, "
                              "deduplication and decontamination (see removed.jsonl)", out)
            train_tokenizer(texts, tok_dir, c.tokenizer.vocab_size, c.tokenizer.model_type,
                            c.tokenizer.byte_fallback, c.tokenizer.max_sentences,
                            seed=c.seed)
    tok = Tokenizer.load(tok_dir)
    dtype = token_dtype(tok.vocab_size).name
    written = _stage(out, "tokenise", lambda: run(
        stages.tokenise_shard, [(cfg, str(out), s, dropped, str(tok_dir), dtype)
                                for s in range(k)]))
    report.write(out, c, scans, dd["stats"], contaminated, dropped, written, tok, dtype,
                 manifest, bad)


def _nonempty(items, message: str, where):
    """Yield from items; raise DataError(message) if there are none."""
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        raise DataError(message, str(where))


def _eval_file_ngrams(c) -> np.ndarray:
    """n-gram hashes of the named evaluation files (any input format)."""
    from llm.data import decontaminate
    from llm.data.sources import read_records

    if not c.decontaminate.eval_files:
        return np.zeros(0, np.uint64)
    texts = (stages.content_key(r.kind, r.fields)
             for f in list_input_files(c.decontaminate.eval_files)
             for r in read_records(f, c.text_field))
    return decontaminate.ngram_set(texts, c.decontaminate.ngram, stages.BATCH)
