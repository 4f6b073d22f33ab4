"""The preparation stages, each a module-level function an executor can run per shard.

count_lines (per shard): newlines in each shard's byte range of every uncompressed JSONL,
  so the scan can number the lines of its own range without reading the others.
scan (per shard): read → clean → filter (text records only) → exact key, MinHash signature,
  split; spilled to `_work/scan-<k>.jsonl` (documents) and `.npz` (order keys, exact keys,
  signatures).
dedup (global, over signatures and ids only): exact, then near duplicates.
decontaminate (per shard, then global): n-grams of validation/test and eval files.
tokenise (per shard): records for each split, with the mixture's repeats.

A document's identity is its order key `file_index << 32 | line`: the smallest key in a
duplicate cluster is kept, whichever shard or executor saw it.
"""

from __future__ import annotations

import json
import pathlib

import ml_collections
import numpy as np

from llm.data import chat, clean, decontaminate, dedup, preference, sources, split
from llm.data.mixture import mixture_weights, repeats
from llm.data.records import ShardWriter, shard_prefix
from llm.data.report import removed_row
from llm.data.tokenizer import Tokenizer

WORK = "_work"
BATCH = 512  # documents per signature batch


def content_key(kind: str, fields: dict) -> str:
    """The text a document is deduplicated and decontaminated by: a preference row is the
    whole pair (two right-over-wrong pairs sharing prompt and chosen are two pairs), an
    unpaired row its prompt, completion and label."""
    if kind == "text":
        return fields["text"]
    if kind == "chat":
        return "\n".join(m["content"] for m in fields["messages"])
    if kind == "preference":
        return "\n".join((fields["prompt"], fields["chosen"], fields["rejected"]))
    if kind == "unpaired":
        return "\n".join((fields["prompt"], fields["completion"], str(fields["label"])))
    return fields["prompt"]


def split_key(kind: str, fields: dict) -> str:
    """The text a document's split is drawn from: rows built on a prompt go by the prompt
    alone, so no prompt is on both sides of the train/validation split."""
    if kind in ("preference", "unpaired", "prompt"):
        return fields["prompt"]
    return content_key(kind, fields)


def order_key(file_index: int, line: int) -> int:
    """Global document id: input file order first, then line."""
    return (file_index << 32) | line


def count_lines(files: list[str], shard: int, num_shards: int) -> dict[int, int]:
    """Stage 0 for one shard: {file index: newlines in its byte range} of byte-split files."""
    return {fi: sources.count_newlines(pathlib.Path(name), (shard, num_shards))
            for fi, name in enumerate(files) if sources.splits_by_bytes(pathlib.Path(name))}


def lines_before(counts: list[dict[int, int]]) -> list[dict[int, int]]:
    """Per shard, {file index: newlines before its byte range}, from every shard's counts."""
    out, running = [], dict.fromkeys(counts[0] if counts else (), 0)
    for shard_counts in counts:
        out.append(dict(running))
        for fi, n in shard_counts.items():
            running[fi] = running.get(fi, 0) + n
    return out


def scan_shard(cfg: dict, files: list[str], shard: int, num_shards: int, out: str,
               before: dict[int, int] | None = None) -> dict:
    """Stage 1 for one shard: read, clean, filter, hash, sign and spill its documents.

    `before` is this shard's `lines_before` entry (counted here when not given).
    """
    c = ml_collections.ConfigDict(cfg)
    work = pathlib.Path(out) / WORK
    stats = sources.ReadStats()
    counts = {"documents": 0, "characters": 0, "kept": 0, "filters": {}, "lines_removed": {}}
    orders, exact, sigs, kinds = [], [], [], set()
    removed = []
    batch: list[str] = []
    with open(work / f"scan-{shard}.jsonl", "w") as spill:
        for fi, name in enumerate(files):
            path = pathlib.Path(name)
            shared = sources.is_record_file(path)  # every shard reads its part of it
            if not shared and fi % num_shards != shard:
                continue
            part = (shard, num_shards) if shared else (0, 1)
            known = None if before is None else before.get(fi, 0)
            for rec in sources.read_records(path, c.text_field, c.skip_bad_records, stats,
                                            part, known):
                counts["documents"] += 1
                fields = dict(rec.fields)
                kinds.add(rec.kind)
                if rec.kind == "text" and c.clean.enabled:
                    counts["characters"] += len(fields["text"])
                    fields["text"], problem = clean.clean_text(
                        clean.normalize(fields["text"], c.clean), c.clean.filters,
                        counts["lines_removed"])
                    if problem is not None:
                        name, value, threshold = problem
                        counts["filters"][name] = counts["filters"].get(name, 0) + 1
                        removed.append(removed_row(rec.source, rec.line, "clean", name,
                                                   round(value, 6), threshold))
                        continue
                if rec.kind == "chat" and not chat.has_targets(fields["messages"]):
                    # nothing to learn from, and packed in it would dilute its batch silently
                    counts["filters"]["no_target_tokens"] = (
                        counts["filters"].get("no_target_tokens", 0) + 1)
                    removed.append(removed_row(rec.source, rec.line, stage="sft_rows",
                                               filter="no_target_tokens", value=0,
                                               threshold=1))
                    continue
                problem = (preference.pair_problem(fields) if rec.kind == "preference" else
                           preference.unpaired_problem(fields) if rec.kind == "unpaired"
                           else None)
                if problem:
                    counts["filters"][problem] = counts["filters"].get(problem, 0) + 1
                    removed.append(removed_row(rec.source, rec.line, "preference_rows",
                                               problem))
                    continue
                key = content_key(rec.kind, fields)
                o = order_key(fi, rec.line)
                orders.append(o)
                exact.append(dedup.exact_key(key))
                spill.write(json.dumps({"o": o, "source": rec.source, "line": rec.line,
                                        "kind": rec.kind, "fields": fields,
                                        "split": split.split_of(split_key(rec.kind, fields),
                                                                c.split.validation,
                                                                c.split.test)}) + "\n")
                batch.append(key)
                if len(batch) == BATCH:
                    sigs.append(_sign(batch, c))
                    batch = []
    if batch:
        sigs.append(_sign(batch, c))
    counts["kept"] = len(orders)
    removed += [removed_row(src, line, "read", reason) for src, line, reason in stats.skipped]
    np.savez(work / f"scan-{shard}.npz", order=np.asarray(orders, np.int64),
             exact=np.asarray(exact, dtype="U32"),
             sig=np.concatenate(sigs) if sigs else np.zeros((0, c.dedup.num_perm), np.uint32))
    return {"counts": counts, "bad": stats.bad, "removed": removed, "kinds": sorted(kinds)}


def _sign(texts: list[str], c) -> np.ndarray:
    if not c.dedup.near:
        return np.zeros((len(texts), c.dedup.num_perm), np.uint32)
    return dedup.signatures(texts, c.dedup.num_perm, c.dedup.ngram, c.dedup.ngram_unit)


def iter_spill(out: str, shard: int):
    """The spilled documents of one shard, in order."""
    with open(pathlib.Path(out) / WORK / f"scan-{shard}.jsonl") as f:
        for line in f:
            yield json.loads(line)


def find_duplicates(cfg: dict, out: str, num_shards: int) -> tuple[dict, dict]:
    """Stage 2 (global): {order: (reason, kept order)} for exact and near duplicates."""
    c = ml_collections.ConfigDict(cfg)
    parts = [np.load(pathlib.Path(out) / WORK / f"scan-{k}.npz") for k in range(num_shards)]
    order = np.concatenate([p["order"] for p in parts])
    exact = np.concatenate([p["exact"] for p in parts])
    sig = np.concatenate([p["sig"] for p in parts])
    by_order = np.argsort(order, kind="stable")
    order, exact, sig = order[by_order], exact[by_order], sig[by_order]
    dropped: dict[int, tuple[str, int]] = {}
    stats = {"exact_duplicate": 0, "near_duplicate": 0, "candidate_pairs": 0,
             "verified_pairs": 0}
    alive = np.ones(len(order), bool)
    if c.dedup.exact and len(order):
        _, first = np.unique(exact, return_index=True)  # first occurrence in order
        _, inverse = np.unique(exact, return_inverse=True)
        kept = first[inverse]
        for i in np.flatnonzero(kept != np.arange(len(order))):
            dropped[int(order[i])] = ("exact_duplicate", int(order[kept[i]]))
            alive[i] = False
        stats["exact_duplicate"] = int((~alive).sum())
    if c.dedup.near and alive.sum() > 1:
        idx = np.flatnonzero(alive)
        bands, rows = c.dedup.bands, c.dedup.rows
        if bands <= 0 or rows <= 0:
            bands, rows = dedup.choose_banding(c.dedup.num_perm, c.dedup.threshold,
                                               c.dedup.target_recall)
        pairs = dedup.candidate_pairs(sig[idx], bands, rows, c.dedup.max_bucket)
        stats["candidate_pairs"] = len(pairs)
        pairs = idx[pairs] if len(pairs) else pairs
        good = _verify(c, out, num_shards, order, sig, pairs)
        pairs = pairs[good]
        stats["verified_pairs"] = len(pairs)
        label = dedup.components(len(order), pairs)
        for i in np.flatnonzero(label != np.arange(len(order))):
            dropped[int(order[i])] = ("near_duplicate", int(order[label[i]]))
        stats["near_duplicate"] = int((label != np.arange(len(order))).sum())
        stats["bands"], stats["rows"] = bands, rows
    return dropped, stats


def _verify(c, out, num_shards, order, sig, pairs) -> np.ndarray:
    """Which candidate pairs reach the threshold (true shingle Jaccard or estimate)."""
    if len(pairs) == 0:
        return np.zeros(0, bool)
    if c.dedup.verify == "estimate":  # else 'jaccard' (dedup.check_config allows no other)
        return dedup.estimated_jaccard(sig, pairs) >= c.dedup.threshold
    need = set(order[np.unique(pairs)].tolist())
    texts = {}
    for k in range(num_shards):
        for row in iter_spill(out, k):
            if row["o"] in need:
                texts[row["o"]] = content_key(row["kind"], row["fields"])
    keys = np.array(sorted(texts), np.int64)
    hashes, doc = dedup.shingle_hashes([texts[o] for o in keys.tolist()], c.dedup.ngram,
                                       c.dedup.ngram_unit)
    local = np.searchsorted(keys, order[pairs])  # pair members as indices into keys
    return dedup.pair_jaccard(hashes, doc, local) >= c.dedup.threshold


def held_out_ngrams(cfg: dict, out: str, shard: int, dropped: dict) -> np.ndarray:
    """Stage 3a: unique n-gram hashes of this shard's validation/test documents."""
    c = ml_collections.ConfigDict(cfg)
    texts = (content_key(r["kind"], r["fields"]) for r in iter_spill(out, shard)
             if r["split"] != "train" and r["o"] not in dropped)
    return decontaminate.ngram_set(texts, c.decontaminate.ngram, BATCH)


def contaminated(cfg: dict, out: str, shard: int, dropped: dict, ngrams: np.ndarray) -> list:
    """Stage 3b: order keys of this shard's training documents sharing an n-gram."""
    c = ml_collections.ConfigDict(cfg)
    rows = [r for r in iter_spill(out, shard) if r["split"] == "train" and r["o"] not in dropped]
    hits: list[int] = []
    for s in range(0, len(rows), BATCH):
        chunk = rows[s:s + BATCH]
        bad = decontaminate.sharing([content_key(r["kind"], r["fields"]) for r in chunk],
                                    c.decontaminate.ngram, ngrams)
        hits.extend(chunk[i]["o"] for i in bad)
    return hits


def _template_fields(fields: dict) -> dict:
    """A chat row's other fields (e.g. a `tools` list), which a Jinja template sees as
    transformers' `apply_chat_template(**kwargs)` passes them."""
    return {k: v for k, v in fields.items() if k not in ("messages", "add_generation_prompt")}


def tokenise_shard(cfg: dict, out: str, shard: int, dropped: dict, tok_dir: str,
                   dtype: str) -> dict:
    """Stage 4 for one shard: write records of every split; returns counts per split/stream."""
    c = ml_collections.ConfigDict(cfg)
    tok = Tokenizer.load(tok_dir)
    weights = mixture_weights(c.mixture.weights)
    writers: dict[tuple[str, str], ShardWriter] = {}

    def writer(split_name: str, stream: str, mask: bool, extra: bool) -> ShardWriter:
        if (split_name, stream) not in writers:
            writers[split_name, stream] = ShardWriter(
                shard_prefix(out, split_name, stream, shard), np.dtype(dtype), mask, extra)
        return writers[split_name, stream]

    for r in iter_spill(out, shard):
        if r["o"] in dropped:
            continue
        kind, f, sp = r["kind"], r["fields"], r["split"]
        where = f"{r['source']}:{r['line']}"
        copies = repeats(r["source"], content_key(kind, f), weights) if sp == "train" else 1
        for _ in range(copies):
            if kind == "text":
                writer(sp, "text", False, False).add(
                    tok.encode(f["text"], c.tokenizer.add_bos, c.tokenizer.add_eos))
            elif kind == "chat":
                ids, mask = chat.render_messages(tok, f["messages"], where=where,
                                                 **_template_fields(f))
                writer(sp, "sft", True, False).add(ids, mask)
            elif kind == "preference":
                for stream in ("chosen", "rejected"):
                    pair = chat.render_pair(tok, f["prompt"], f[stream], where)
                    # the chosen stream carries the pair's margin (the reward task's loss)
                    extra = {"margin": f.get("margin", 0.0)} if stream == "chosen" else None
                    writer(sp, stream, True, stream == "chosen").add(pair.ids, pair.mask, extra)
            elif kind == "unpaired":
                pair = chat.render_pair(tok, f["prompt"], f["completion"], where)
                writer(sp, "completion", True, True).add(
                    pair.ids, pair.mask,
                    {"label": f["label"], "prompt_length": len(pair.prompt_ids)})
            else:
                writer(sp, "prompt", False, True).add(
                    chat.render_prompt(tok, f["prompt"], where=where),
                    extra={"answer": f.get("answer")})
    return {f"{s}/{st}": w.close() for (s, st), w in sorted(writers.items())}
