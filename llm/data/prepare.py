"""`prepare(data_config)`: raw inputs → a prepared directory the loaders read.

    <output_dir>/
      records/<split>/<stream>-<k>.*   tokenised shards (see records.py)
      tokenizer/                       trained here, or copied from data.tokenizer.path
      meta.json                        tokenizer, dtype, counts per split and stream, source hashes
      report.json                      documents/tokens in and out of every stage, drops per filter
      removed.jsonl                    one row per dropped document: source, line, stage, filter,
                                       value, threshold (dedup: duplicate_of)
      manifest.json                    settings + hashes of the inputs, eval files and given
                                       tokenizer: a rerun with the same ones reuses finished
                                       stages; a finished dataset made from others is replaced
                                       only with data.overwrite=True, an unfinished one freely
      _work/                           cached stage results, for the shard count in shards.json

Every setting is checked before the output folder is touched; replacing removes only the
files above, never the user's own.

Stages run on one `executors.Executor` (inline, a local process pool or Ray); see stages.py.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections import Counter

import ml_collections
import numpy as np
import xxhash

from llm.data import DataError, checksums, clean, decontaminate, dedup, report, stages, tokenizer
from llm.data.executors import EXECUTORS, Executor
from llm.data.jinja_chat import compile_template
from llm.data.loaders import META_FILE
from llm.data.mixture import check_sources, mixture_weights
from llm.data.records import token_dtype
from llm.data.sources import input_paths, list_input_files, splits_by_bytes
from llm.data.split import check_fractions
from llm.data.tokenizer import Tokenizer, train_tokenizer

MANIFEST = "manifest.json"
SHARDS = "shards.json"  # in _work: the shard count the cached stages were cut into
# Everything the pipeline writes into an output folder (meta first: without it, the folder
# no longer counts as finished); nothing else there is ever removed.
OUTPUTS = (META_FILE, META_FILE + ".tmp", "report.json", "removed.jsonl", "records",
           "tokenizer", stages.WORK, MANIFEST, "manifest.tmp", checksums.MANIFEST,
           checksums.MANIFEST + ".tmp")
# Settings that change how, not what, is produced: a rerun may change them freely.
_NOT_IN_MANIFEST = ("path", "output_dir", "overwrite", "executor", "num_workers")


def is_prepared(path: str | pathlib.Path) -> bool:
    """True when `path` is a finished prepared directory (meta.json and tokenizer present)."""
    p = pathlib.Path(path)
    return p.is_dir() and (p / META_FILE).exists() and (p / "tokenizer").is_dir()


def check_unchanged(path: str | pathlib.Path) -> None:
    """Cheap check (file sizes against checksums.json) that a prepared directory is as its
    preparation left it; DataError naming the first file that differs, a warning for a
    directory prepared before checksums existed."""
    try:
        problem = checksums.verify(path, full=False, extra_ok=True)
    except FileNotFoundError:
        print(f"warning: {path}: no checksum manifest (prepared before checksums existed); "
              "its files are not checked", flush=True)
        return
    except ValueError as error:
        raise DataError(str(error)) from None
    if problem is not None:
        raise DataError(f"{problem}: the prepared dataset changed after preparation; prepare "
                        "it again (data.overwrite=True)")


def check_config(c: ml_collections.ConfigDict) -> None:
    """Raise DataError naming the first bad setting; nothing is read or written before this."""
    if not c.output_dir:
        raise DataError("data.output_dir is empty: say where prepared data should go")
    if c.executor not in EXECUTORS:
        raise DataError(f"data.executor must be one of {EXECUTORS}, got {c.executor!r}")
    for key in ("num_workers", "num_shards"):
        if c[key] < 0:
            raise DataError(f"data.{key} must be >= 0, got {c[key]}")
    check_fractions(c.split.validation, c.split.test)
    clean.check_config(c.clean)
    dedup.check_config(c.dedup)
    decontaminate.check_config(c.decontaminate)
    tokenizer.check_config(c.tokenizer)
    mixture_weights(c.mixture.weights)


def _hashes(files: list[pathlib.Path]) -> list[dict]:
    """Path, size and xxh3-128 of each file's contents."""
    out = []
    for f in files:
        h = xxhash.xxh3_128()
        with open(f, "rb") as fh:
            for block in iter(lambda fh=fh: fh.read(1 << 22), b""):
                h.update(block)
        out.append({"path": str(f), "bytes": f.stat().st_size, "xxh3_128": h.hexdigest()})
    return out


def _manifest(cfg: ml_collections.ConfigDict, files: list[pathlib.Path]) -> dict:
    settings = {k: v for k, v in cfg.to_dict().items() if k not in _NOT_IN_MANIFEST}
    manifest = {"settings": settings, "inputs": _hashes(files)}
    # Files read besides the inputs: editing one must not leave a stale dataset 'prepared'.
    if cfg.decontaminate.eval_files:
        manifest["eval_files"] = _hashes(list_input_files(cfg.decontaminate.eval_files,
                                                          "decontaminate.eval_files"))
    if cfg.clean.filters.bad_words_file:
        manifest["bad_words_file"] = _hashes(
            [pathlib.Path(cfg.clean.filters.bad_words_file).expanduser()])
    if cfg.tokenizer.path:
        manifest["tokenizer_files"] = _hashes(Tokenizer.files(cfg.tokenizer.path))
    if cfg.chat_template:
        manifest["chat_template"] = _hashes([pathlib.Path(cfg.chat_template).expanduser()])
    return manifest


def _output_dir(output_dir: str, inputs: str, files: list[pathlib.Path]) -> pathlib.Path:
    """`output_dir`, unless it is a file or overlaps the inputs (its outputs would become
    inputs of the next run)."""
    out = pathlib.Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise DataError("data.output_dir is an existing file, not a directory", str(out))
    where = out.resolve()
    for root in input_paths(inputs):
        if root.is_dir() and (where == root.resolve() or root.resolve() in where.parents):
            raise DataError(f"data.output_dir lies inside the input directory {root}, so its "
                            "outputs would be read as inputs; choose a folder outside it",
                            str(out))
    if any(where == f.resolve() or where in f.resolve().parents for f in files):
        raise DataError("data.output_dir must not contain the inputs", str(out))
    return out


def _write_json(path: pathlib.Path, value) -> None:
    """Write JSON atomically: a reader sees the old file or the whole new one."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    tmp.replace(path)


def _remove_outputs(out: pathlib.Path, keep: tuple[str, ...] = ()) -> None:
    """Delete what the pipeline wrote into `out` (not `keep`); the user's own files stay."""
    for name in OUTPUTS:
        p = out / name
        if name in keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()


def _claim_output(out: pathlib.Path, manifest: dict, overwrite: bool) -> None:
    """Create `out`, resume it (same manifest), or replace the pipeline's files in it: an
    unfinished run's freely, a finished dataset's only with overwrite. Never the user's files."""
    if out.exists() and any(out.iterdir()):
        try:
            old = json.loads((out / MANIFEST).read_text())
        except FileNotFoundError:
            old = None
        except json.JSONDecodeError:
            old = {}  # ours, but damaged: never the same as a new manifest
        if old == manifest:
            return
        if old is None and not (out / META_FILE).exists():
            names = sorted(p.name for p in out.iterdir())
            raise DataError(f"output directory is not a prepared dataset (it holds "
                            f"{', '.join(names[:5])}{', ...' if len(names) > 5 else ''}); "
                            "choose a new or empty data.output_dir", str(out))
        if is_prepared(out) and not overwrite:
            raise DataError("output directory holds a dataset prepared from other inputs or "
                            "settings; choose another data.output_dir or set "
                            "data.overwrite=True", str(out))
        _remove_outputs(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / MANIFEST, manifest)


def _match_shards(out: pathlib.Path, k: int) -> None:
    """Cached stages hold one result per shard: if an interrupted run used another shard count
    (num_workers may change between runs), start its work over."""
    record = out / stages.WORK / SHARDS
    old = json.loads(record.read_text())["num_shards"] if record.exists() else None
    if old != k:
        _remove_outputs(out, keep=(MANIFEST,))
        (out / stages.WORK).mkdir()
        _write_json(record, {"num_shards": k})


def _stage(out: pathlib.Path, name: str, compute):
    """Run `compute()` unless a previous run with the same manifest finished this stage."""
    done = out / stages.WORK / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    result = compute()
    _write_json(done, result)
    return result


def prepare(data_config: ml_collections.ConfigDict) -> pathlib.Path:
    """Run the whole pipeline for `data_config` (configs/data.py); returns the output dir."""
    c = data_config
    check_config(c)
    inputs = c.inputs or c.path
    files = list_input_files(inputs)
    out = _output_dir(c.output_dir, inputs, files)
    check_sources(mixture_weights(c.mixture.weights), [str(f) for f in files])
    if c.tokenizer.path:  # a missing or corrupt one fails before any writing
        with_template(Tokenizer.load(c.tokenizer.path), c.chat_template)
    manifest = _manifest(c, files)
    _claim_output(out, manifest, c.overwrite)
    if is_prepared(out):
        return out
    k = c.num_shards if c.num_shards > 0 else max(1, c.num_workers)
    _match_shards(out, k)
    with Executor(c.executor, c.num_workers) as ex:  # one worker pool for every stage
        _run_stages(c, out, files, manifest, ex, k)
    return out


def _run_stages(c: ml_collections.ConfigDict, out: pathlib.Path, files: list[pathlib.Path],
                manifest: dict, ex: Executor, k: int) -> None:
    """scan → dedup → decontaminate → tokenizer → tokenise → report over `k` shards, each
    stage reused if done."""
    inputs = c.inputs or c.path
    cfg = c.to_dict()
    names = [str(f) for f in files]
    run = ex.run

    def scan_stage():
        before = [{} for _ in range(k)]
        if k > 1 and any(splits_by_bytes(f) for f in files):
            before = stages.lines_before(run(stages.count_lines,
                                             [(names, s, k) for s in range(k)]))
        return run(stages.scan_shard, [(cfg, names, s, k, str(out), before[s])
                                       for s in range(k)])

    scans = _stage(out, "scan", scan_stage)
    kinds = {kind for scan in scans for kind in scan["kinds"]}
    if c.tokenizer.path:  # what the rows need, before dedup and tokenising
        check_tokenizer_for(with_template(Tokenizer.load(c.tokenizer.path), c.chat_template),
                            kinds)
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
    if c.decontaminate.action == "drop":  # else 'report': listed in removed.jsonl, kept
        dropped.update({o: ("contamination", None) for o in contaminated})

    tok_dir = out / "tokenizer"
    if not Tokenizer.exists(tok_dir):
        if c.tokenizer.path:
            tok = Tokenizer.load(c.tokenizer.path)
        else:
            texts = (stages.content_key(r["kind"], r["fields"]) for s in range(k)
                     for r in stages.iter_spill(str(out), s)
                     if r["split"] == "train" and r["o"] not in dropped)
            texts = _nonempty(texts, "no training documents are left: "
                              f"{_losses(scans, dropped)}", out)
            tok = train_tokenizer(texts, tok_dir, c.tokenizer.vocab_size,
                                  c.tokenizer.model_type, c.tokenizer.byte_fallback,
                                  c.tokenizer.max_sentences, seed=c.seed)
        with_template(tok, c.chat_template).save(tok_dir)
    tok = Tokenizer.load(tok_dir)
    dtype = token_dtype(tok.vocab_size).name
    written = _stage(out, "tokenise", lambda: run(
        stages.tokenise_shard, [(cfg, str(out), s, dropped, str(tok_dir), dtype)
                                for s in range(k)]))
    if not any(n["documents"] for shard in written for key, n in shard.items()
               if key.startswith("train/")):
        raise DataError(f"the train split is empty: {_losses(scans, dropped)}; mixture.weights "
                        f"({c.mixture.weights!r}) kept no copy of the rest", str(out))
    report.write(out, c, scans, dd["stats"], contaminated, dropped, written, tok, dtype,
                 manifest, bad)
    checksums.write_manifest(out, exclude=(stages.WORK,))  # checked at each training start


def with_template(tok: Tokenizer, template_file: str) -> Tokenizer:
    """`tok` with the Jinja chat template in `template_file` (data.chat_template), if set;
    DataError naming the file when it is missing or does not parse."""
    if not template_file:
        return tok
    path = pathlib.Path(template_file).expanduser()
    if not path.is_file():
        raise DataError("data.chat_template: no such file (expected a Jinja chat template)",
                        str(path))
    source = path.read_text(encoding="utf-8")
    compile_template(source, str(path))
    return tok.with_chat_template(source, str(path))


def check_tokenizer_for(tok: Tokenizer, kinds: set[str]) -> None:
    """DataError naming the tokenizer's directory when it lacks what the rows need: a chat
    template for chat, preference and prompt rows, an end-of-sequence token for SFT."""
    rows = f"data preparation ({', '.join(sorted(kinds))} rows)"
    if kinds & {"chat", "preference", "unpaired", "prompt"}:
        tok.require("chat", rows)
    if kinds - {"prompt"}:
        tok.require("eos", rows)


def _nonempty(items, message: str, where):
    """Yield from items; raise DataError(message) if there are none."""
    empty = True
    for item in items:
        empty = False
        yield item
    if empty:
        raise DataError(message, str(where))


def _losses(scans: list[dict], dropped: dict) -> str:
    """How many documents were read and where they went, for an empty-train-split error."""
    reasons: Counter = Counter()
    for s in scans:
        reasons.update({f"filter:{k}": n for k, n in s["counts"]["filters"].items()})
    reasons.update(reason for reason, _ in dropped.values())
    removed = ", ".join(f"{k}={n}" for k, n in sorted(reasons.items())) or "none"
    read = sum(s["counts"]["documents"] for s in scans)
    return (f"{read} documents read, removed {removed}, the rest assigned to validation/test "
            "(split.validation, split.test)")


def _eval_file_ngrams(c) -> np.ndarray:
    """n-gram hashes of the named evaluation files (any input format)."""
    from llm.data.sources import read_records

    if not c.decontaminate.eval_files:
        return np.zeros(0, np.uint64)
    texts = (stages.content_key(r.kind, r.fields)
             for f in list_input_files(c.decontaminate.eval_files, "decontaminate.eval_files")
             for r in read_records(f, c.text_field))
    return decontaminate.ngram_set(texts, c.decontaminate.ngram, stages.BATCH)
