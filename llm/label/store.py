"""The labelling directory: candidates, the append-only judgement log, and what is built
from it.

    candidates.jsonl   {"id", "prompt", "responses": [K texts], "row": the prompt row}
    judgements.jsonl   one record per judgement, appended and flushed, never rewritten:
                       {"seq", "judge", "id", "kind": rank | pair | tie | skip | undo, ...}
    preferences.jsonl  rebuilt from the log after every change (undone records dropped):
                       pairs {"prompt", "chosen", "rejected", "judge", "principle",
                       "principles_hash", "confidence", "id"}, and rows the preference
                       loader counts without pairing: {"outcome": "tie" | "skip", ...}
    report.json        counts per judge: pairs, ties, skips by reason, undone records

A `rank` record orders some of a prompt's responses best first: each ranked response is
preferred to every response after it and to every unranked one. A `pair` record is one
comparison (the AI judge, verifiers, reward models).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import threading
import time
from collections.abc import Iterator
from typing import Any

CANDIDATES = "candidates.jsonl"
LOG = "judgements.jsonl"
PREFERENCES = "preferences.jsonl"
REPORT = "report.json"
KINDS = ("rank", "pair", "tie", "skip", "undo")


class LabelError(ValueError):
    """Bad labelling input: the message names the file, line or key."""


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One prompt and its sampled responses."""

    id: str
    prompt: str
    responses: list[str]
    row: dict


def read_jsonl(path: pathlib.Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) of a JSONL file; a bad line is a LabelError naming it.

    A last line without its newline (a write cut short) is ignored, not an error.
    """
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == len(lines) and not line.endswith("\n"):
            return  # torn by a kill mid-write; the writer redoes it
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise LabelError(f"{path} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise LabelError(f"{path} line {number}: expected a JSON object")
        yield number, row


def append_line(f, record: dict) -> None:
    """Append one JSON line and push it to disk before returning."""
    f.write(json.dumps(record, ensure_ascii=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def cut_torn_tail(path: pathlib.Path) -> None:
    """Drop a last line that lacks its newline (a kill mid-write), so appends stay whole."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def load_candidates(out_dir: pathlib.Path) -> list[Candidate]:
    """The candidates of a labelling directory (written by the `sample` mode)."""
    path = out_dir / CANDIDATES
    if not path.exists():
        raise LabelError(f"{path}: no candidates; run --config.mode=sample first")
    found = []
    for number, row in read_jsonl(path):
        responses = row.get("responses")
        if not isinstance(row.get("id"), str) or not isinstance(row.get("prompt"), str) or \
                not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
            raise LabelError(f"{path} line {number}: expected 'id', 'prompt' (strings) and "
                             "'responses' (a list of strings)")
        found.append(Candidate(row["id"], row["prompt"], responses, row.get("row") or {}))
    if not found:
        raise LabelError(f"{path}: holds no candidates")
    return found


def _atomic_write(path: pathlib.Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Store:
    """The judgement log of one labelling directory; thread-safe appends and rebuilds."""

    def __init__(self, out_dir: str | os.PathLike, candidates: list[Candidate] | None = None):
        self.dir = pathlib.Path(out_dir)
        self.candidates = candidates if candidates is not None else load_candidates(self.dir)
        self.by_id = {c.id: c for c in self.candidates}
        self.lock = threading.Lock()
        self.log_path = self.dir / LOG
        if (self.dir / PREFERENCES).exists() and not self.log_path.exists():
            raise LabelError(f"{self.dir / PREFERENCES} exists but {LOG} does not: it was not "
                             "written by this tool and is never overwritten; move it away")
        cut_torn_tail(self.log_path)
        self.records = [r for _, r in read_jsonl(self.log_path)] if self.log_path.exists() \
            else []
        for n, record in enumerate(self.records, 1):
            if record.get("kind") not in KINDS or "judge" not in record:
                raise LabelError(f"{self.log_path} line {n}: expected 'judge' and a 'kind' in "
                                 f"{', '.join(KINDS)}")

    def append(self, records: list[dict]) -> list[dict]:
        """Append records (each gets `seq` and `time`), flushed to disk, then rebuild."""
        with self.lock:
            with open(self.log_path, "a", encoding="utf-8") as f:
                for record in records:
                    record = {"seq": len(self.records) + 1, "time": round(time.time(), 3),
                              **record}
                    append_line(f, record)
                    self.records.append(record)
            self.rebuild()
        return self.records[-len(records):] if records else []

    def active(self) -> list[dict]:
        """The log's records less undo records and the records they undid."""
        undone = {r["undoes"] for r in self.records if r["kind"] == "undo"}
        return [r for r in self.records if r["kind"] != "undo" and r["seq"] not in undone]

    def rebuild(self) -> dict:
        """Rewrite preferences.jsonl and report.json from the log; returns the report."""
        rows, report = build_rows(self.active(), self.by_id)
        self.log_path.touch()  # our preferences.jsonl never exists without its log
        report["undone"] = sum(r["kind"] == "undo" for r in self.records)
        report["prompts"] = len(self.candidates)
        _atomic_write(self.dir / PREFERENCES,
                      "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        _atomic_write(self.dir / REPORT, json.dumps(report, indent=2, sort_keys=True) + "\n")
        return report


def ranking_pairs(ranking: list[int], k: int) -> list[tuple[int, int]]:
    """(better, worse) index pairs of a best-first partial ranking of k responses."""
    rest = [i for i in range(k) if i not in ranking]
    return [(a, b) for n, a in enumerate(ranking) for b in [*ranking[n + 1:], *rest]]


def build_rows(records: list[dict], by_id: dict[str, Candidate]) -> tuple[list[dict], dict]:
    """preferences.jsonl rows of the active records, and the counts per judge."""
    rows: list[dict] = []
    judges: dict[str, dict[str, Any]] = {}
    for record in records:
        cand = by_id.get(record["id"])
        if cand is None:
            raise LabelError(f"judgement {record['seq']}: unknown prompt id {record['id']!r} "
                             "(not in candidates.jsonl)")
        count = judges.setdefault(record["judge"], {"pairs": 0, "ties": 0, "skips": {}})
        common = {"judge": record["judge"], "principle": record.get("principle"),
                  "principles_hash": record.get("principles_hash"), "id": cand.id}
        kind = record["kind"]
        if kind in ("rank", "pair"):
            pairs = (ranking_pairs(record["ranking"], len(cand.responses)) if kind == "rank"
                     else [(record["chosen"], record["rejected"])])
            # the same text twice (a model repeating itself) teaches nothing as a pair
            pairs = [(b, w) for b, w in pairs if cand.responses[b] != cand.responses[w]]
            for better, worse in pairs:
                rows.append({"prompt": cand.prompt, "chosen": cand.responses[better],
                             "rejected": cand.responses[worse], **common,
                             "confidence": record.get("confidence", 1.0)})
            count["pairs"] += len(pairs)
        elif kind == "tie":
            shown = record.get("responses", list(range(len(cand.responses))))
            rows.append({"prompt": cand.prompt, "outcome": "tie",
                         "responses": [cand.responses[i] for i in shown], **common,
                         "confidence": record.get("confidence")})
            count["ties"] += 1
        else:
            reason = record.get("reason", "skipped")
            rows.append({"prompt": cand.prompt, "outcome": "skip", "reason": reason, **common})
            count["skips"][reason] = count["skips"].get(reason, 0) + 1
    return rows, {"judges": judges, "pairs": sum(j["pairs"] for j in judges.values())}
