"""The `sample` mode: K answers per prompt from the project's sampler, into candidates.jsonl.

Prompts are JSONL rows with a `prompt` string (asked as one user turn), an optional `id`
(else a hash of the prompt text) and any other fields a verifier reads (`answer`). Answer k
of prompt `id` is sampled with a seed drawn from sha256(seed, id, k), and prompts are
batched in a fixed order, so a rerun that completes a cut-short file writes exactly what an
uninterrupted run would have.
"""

from __future__ import annotations

import hashlib
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from llm.label.store import CANDIDATES, LabelError, append_line, cut_torn_tail, read_jsonl

# (prompts as chat rows, one seed per row) -> one completion text per row
CompleteFn = Callable[[list[dict], list[int]], list[str]]


def prompt_id(text: str) -> str:
    """A stable id for a prompt without one: the first 16 hex digits of its sha256."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def answer_seed(seed: int, pid: str, k: int) -> int:
    """The sampling seed of answer k of prompt `pid` (independent of batching and resumes)."""
    digest = hashlib.sha256(f"{seed}|{pid}|{k}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def read_prompts(path: str) -> list[dict]:
    """The rows of a prompts file, each with an `id`; bad input is one LabelError naming it."""
    file = pathlib.Path(path)
    if not path:
        raise LabelError("--config.prompts_file is required (JSONL rows with 'prompt')")
    if not file.is_file():
        raise LabelError(f"--config.prompts_file={path!r}: no such file")
    rows, seen = [], {}
    try:
        lines = list(read_jsonl(file))
    except UnicodeDecodeError as error:
        raise LabelError(f"{path}: not UTF-8 text (byte {error.start})") from None
    for number, row in lines:
        if not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise LabelError(f"{path} line {number}: expected a non-empty 'prompt' string, got "
                             f"keys {sorted(row)}")
        pid = row.get("id", prompt_id(row["prompt"]))
        if not isinstance(pid, str | int) or isinstance(pid, bool):
            raise LabelError(f"{path} line {number}: 'id' must be a string or integer")
        pid = str(pid)
        if pid in seen:
            raise LabelError(f"{path} line {number}: prompt id {pid!r} repeats line "
                             f"{seen[pid]} (give distinct 'id's or drop the duplicate)")
        seen[pid] = number
        rows.append({**row, "id": pid})
    if not rows:
        raise LabelError(f"{path}: no prompts (the file is empty)")
    return rows


def sampler_completer(sampler: Any, stop_token_ids: Sequence[int] = (), **controls: Any
                      ) -> CompleteFn:
    """A CompleteFn over the project's Sampler: chat-templated prompts, one seed per row."""
    def complete(requests: list[dict], seeds: list[int]) -> list[str]:
        prompts = [sampler.chat_template(r["messages"]) for r in requests]
        done = sampler.complete(prompts, stop_token_ids=list(stop_token_ids), seed=seeds,
                                **controls)
        return [c.text for c in done]
    return complete


def sample_candidates(complete: CompleteFn, rows: list[dict], out_dir: pathlib.Path, *,
                      num_responses: int, batch_size: int, seed: int) -> dict:
    """Complete candidates.jsonl: K answers for each prompt not yet in it; returns counts."""
    if num_responses < 2:
        raise LabelError(f"label.num_responses={num_responses}: expected >= 2 (a comparison "
                         "needs two answers)")
    if batch_size < 1:
        raise LabelError(f"label.batch_size={batch_size}: expected >= 1")
    path = out_dir / CANDIDATES
    cut_torn_tail(path)
    done = {row["id"]: row for _, row in read_jsonl(path)} if path.exists() else {}
    unknown = sorted(set(done) - {r["id"] for r in rows})
    if unknown:
        raise LabelError(f"{path} holds prompt ids the prompts file does not ({unknown[:3]}); "
                         "use a new --config.output_dir for a different prompts file")
    for row in rows:
        if row["id"] in done and len(done[row["id"]]["responses"]) != num_responses:
            raise LabelError(f"{path}: prompt {row['id']!r} has "
                             f"{len(done[row['id']]['responses'])} responses, the config asks "
                             f"{num_responses}; use a new --config.output_dir")
    todo = sum(r["id"] not in done for r in rows)
    written = 0
    with open(path, "a", encoding="utf-8") as f:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]  # fixed batches, so resumes match
            if all(r["id"] in done for r in chunk):
                continue
            requests = [{"messages": [{"role": "user", "content": r["prompt"]}]}
                        for r in chunk for _ in range(num_responses)]
            seeds = [answer_seed(seed, r["id"], k) for r in chunk for k in range(num_responses)]
            texts = complete(requests, seeds)
            for n, row in enumerate(chunk):
                if row["id"] in done:
                    continue
                answers = texts[n * num_responses:(n + 1) * num_responses]
                extra = {k: v for k, v in row.items() if k not in ("id", "prompt")}
                append_line(f, {"id": row["id"], "prompt": row["prompt"],
                                "responses": answers, "row": extra})
                written += 1
            print(f"sample: {written}/{todo} prompts", file=sys.stderr, flush=True)
    return {"prompts": len(rows), "written": written, "already_done": len(rows) - todo}
