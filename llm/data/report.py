"""meta.json, report.json and removed.jsonl of a prepared directory, and the printed summary."""

from __future__ import annotations

import json
import pathlib
import sys

FORMAT = "llm-records-v1"


def removed_row(source: str, line: int, stage: str, filter: str, value=None, threshold=None,
                **extra) -> dict:
    """One `removed.jsonl` row: where the record was, which stage and filter dropped it, why.

    Every stage that drops records (cleaning, dedup, decontamination, the SFT and
    preference row rules) writes this shape; dedup adds `duplicate_of`.
    """
    return {"source": source, "line": line, "stage": stage, "filter": filter, "value": value,
            "threshold": threshold, **extra}


def removed_counts(rows: list[dict]) -> dict:
    """{stage: {filter: documents}} over removed.jsonl rows (rows kept=True only flag)."""
    out: dict = {}
    for row in rows:
        if not row.get("kept"):
            by_filter = out.setdefault(row["stage"], {})
            by_filter[row["filter"]] = by_filter.get(row["filter"], 0) + 1
    return out


def _dropped_row(c, order: int, reason: str, kept_order: int | None, files: list[str],
                 **extra) -> dict:
    """The removed.jsonl row of a document dedup or decontamination dropped (or flagged)."""
    where = _where(order, files)
    if reason == "contamination":
        return removed_row(where["source"], where["line"], "decontaminate", reason,
                           threshold=c.decontaminate.ngram, **extra)
    threshold = c.dedup.threshold if reason == "near_duplicate" else None
    return removed_row(where["source"], where["line"], "dedup", reason, threshold=threshold,
                       duplicate_of=_where(kept_order, files), **extra)


def _where(order: int, files: list[str]) -> dict:
    """{'source', 'line'} of a global order key (file index << 32 | line)."""
    return {"source": files[order >> 32], "line": order & 0xFFFFFFFF}


def write(out: pathlib.Path, c, scans: list, dedup_stats: dict, contaminated: list,
          dropped: dict, written: list, tok, dtype: str, manifest: dict, bad: dict) -> dict:
    """Write the three files (meta last, so its presence means 'finished'); print a summary."""
    # here, not at the top: stages import removed_row in every worker, and loaders pulls in
    # JAX (seconds per spawned process)
    from llm.data.loaders import META_FILE

    files = [i["path"] for i in manifest["inputs"]]
    removed = [r for s in scans for r in s["removed"]]
    for o, (reason, kept) in sorted(dropped.items()):
        removed.append(_dropped_row(c, o, reason, kept, files))
    if c.decontaminate.action == "report":  # listed, not removed
        removed += [_dropped_row(c, o, "contamination", None, files, kept=True)
                    for o in contaminated]
    removed.sort(key=lambda r: (files.index(r["source"]), r["line"]))
    with open(out / "removed.jsonl", "w") as f:
        for row in removed:
            f.write(json.dumps(row) + "\n")

    splits: dict = {}
    for shard in written:
        for key, n in shard.items():
            split_name, stream = key.split("/")
            entry = splits.setdefault(split_name, {}).setdefault(
                stream, {"documents": 0, "tokens": 0, "shards": 0})
            entry["documents"] += n["documents"]
            entry["tokens"] += n["tokens"]
            entry["shards"] += 1
    filters: dict = {}
    for s in scans:
        for name, n in s["counts"]["filters"].items():
            filters[name] = filters.get(name, 0) + n
    read = sum(s["counts"]["documents"] for s in scans)
    after_clean = sum(s["counts"]["kept"] for s in scans)
    exact, near = dedup_stats["exact_duplicate"], dedup_stats["near_duplicate"]
    n_contam = len(contaminated) if c.decontaminate.action == "drop" else 0
    stages = [
        {"stage": "read", "documents_in": read + sum(bad.values()), "documents_out": read,
         "dropped": bad},
        {"stage": "clean", "documents_in": read, "documents_out": after_clean,
         "dropped": filters},
        {"stage": "dedup", "documents_in": after_clean,
         "documents_out": after_clean - exact - near,
         "dropped": {"exact_duplicate": exact, "near_duplicate": near}},
        {"stage": "decontaminate", "documents_in": after_clean - exact - near,
         "documents_out": after_clean - exact - near - n_contam,
         "dropped": {"contamination": n_contam}, "flagged": len(contaminated)},
        {"stage": "tokenise", "documents_in": after_clean - exact - near - n_contam,
         "documents_out": {s: {k: v["documents"] for k, v in st.items()}
                           for s, st in splits.items()},
         "tokens_out": sum(v["tokens"] for st in splits.values() for v in st.values())},
    ]
    lines_removed: dict = {}
    for s in scans:
        for name, n in s["counts"]["lines_removed"].items():
            lines_removed[name] = lines_removed.get(name, 0) + n
    stages[1]["lines_removed"] = lines_removed  # C4's line rules: lines, not documents
    report = {"stages": stages, "removed": removed_counts(removed), "bad_records": bad,
              "dedup": dedup_stats, "splits": splits,
              "kinds": sorted({k for s in scans for k in s["kinds"]}),
              "tokenizer": {"requested_vocab_size": None if c.tokenizer.path
                            else c.tokenizer.vocab_size, "vocab_size": tok.vocab_size},
              "warnings": warnings(c, tok)}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    meta = {"format": FORMAT, "dtype": dtype, "vocab_size": tok.vocab_size,
            "tokenizer": "tokenizer", "bos_id": tok.bos_id, "eos_id": tok.eos_id,
            "pad_id": tok.pad_id, "splits": splits, "kinds": report["kinds"],
            "sources": manifest["inputs"]}
    tmp = out / (META_FILE + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(out / META_FILE)
    print(summary(report))
    for line in report["warnings"]:
        print(f"warning: {line}", file=sys.stderr)
    return report


def warnings(c, tok) -> list[str]:
    """What the user asked for but did not get (so far: a smaller trained vocabulary)."""
    # sentencepiece stops early on a small corpus (hard_vocab_limit=False): the data is fine
    # and the model takes its size from meta.json, but the user must know.
    if c.tokenizer.path or tok.vocab_size >= c.tokenizer.vocab_size:
        return []
    return [f"tokenizer.vocab_size={c.tokenizer.vocab_size} was asked for, but this corpus "
            f"supports only {tok.vocab_size} pieces: the tokenizer has {tok.vocab_size}"]


def summary(report: dict) -> str:
    """A readable table of documents in/out and drops per stage."""
    lines = [f"{'stage':<14}{'in':>10}{'out':>10}  dropped"]
    for s in report["stages"]:
        out = s["documents_out"]
        if isinstance(out, dict):
            out = sum(sum(v.values()) for v in out.values())
        dropped = ", ".join(f"{k}={v}" for k, v in (s.get("dropped") or {}).items() if v)
        lines.append(f"{s['stage']:<14}{s['documents_in']:>10}{out:>10}  {dropped}")
    for split_name, streams in sorted(report["splits"].items()):
        for stream, n in sorted(streams.items()):
            lines.append(f"  {split_name}/{stream}: {n['documents']} documents, "
                         f"{n['tokens']} tokens in {n['shards']} shards")
    return "\n".join(lines)
