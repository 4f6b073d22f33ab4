"""Evaluation task files: a YAML file (or a JSONL whose first line is a header) a user writes
without code, and the tasks shipped in `llm/eval/tasks/`.

    name: arithmetic_mc                 # how --config.tasks names it
    kind: multiple_choice               # | perplexity | generation
    data: arithmetic_mc.jsonl           # rows, relative to this file (JSONL)
    prompt: "Question: {question}\\nAnswer:"   # format string over a row's fields

multiple_choice: `choices` (the row field holding the list of answers), `answer` (the row
field holding the right one's index), `choice_prefix` (put before each choice, " "),
`fewshot` (examples drawn deterministically from the other rows, or from `fewshot_data`),
`fewshot_separator`, `seed`.
perplexity: `data` is a text file, a directory of text files or a JSONL with `text_field`;
or `source: stdlib` for the Python standard library's sources (`skip` the first files);
`max_chars` cuts each document.
generation: `verifier` (a reward name in `llm/rewards.py`), `answer` (the row field passed
to it as `answer`), `chat` (render the prompt with the tokenizer's chat template), `n`
samples, `k` (pass@k for each k <= n), `temperature` (0 = greedy), `max_new_tokens`, `stop`.
Any kind: `limit` (the first rows only; 0 = all), `description`.

A JSONL task file starts with `{"task": {...header...}}` and its other lines are the rows.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.resources
import json
import pathlib
import random
import string
from collections.abc import Sequence

import yaml

KINDS = ("multiple_choice", "perplexity", "generation")
TASK_SUFFIXES = (".yaml", ".yml", ".jsonl")


class TaskError(ValueError):
    """A task name, task file or row that cannot be used; names the file, line and field."""


@dataclasses.dataclass(frozen=True)
class EvalTask:
    """A loaded task: its header fields and rows (perplexity: rows of {'text', 'where'})."""

    name: str
    kind: str
    path: str
    rows: tuple[dict, ...]
    prompt: str = "{prompt}"
    description: str = ""
    limit: int = 0
    # multiple_choice
    choices: str = "choices"
    answer: str = "answer"
    choice_prefix: str = " "
    fewshot: int = 0
    fewshot_separator: str = "\n\n"
    fewshot_rows: tuple[dict, ...] = ()
    seed: int = 1234
    # generation
    verifier: str = "exact"
    chat: bool = False
    n: int = 1
    k: tuple[int, ...] = (1,)
    temperature: float = 0.0
    max_new_tokens: int = 64
    stop: tuple[str, ...] = ()

    def render(self, row: dict, where: str) -> str:
        """The row's prompt text (`prompt` formatted with its fields)."""
        try:
            return self.prompt.format(**row)
        except KeyError as error:
            raise TaskError(f"{where}: the prompt names field {error.args[0]!r}, which the "
                            f"row lacks (fields: {sorted(row)})") from None

    def fewshot_prefix(self, index: int) -> str:
        """`fewshot` solved examples for row `index`, drawn with a seed of (seed, index), from
        `fewshot_data` or else the other rows; then the separator."""
        if not self.fewshot:
            return ""
        pool = list(self.fewshot_rows) or [r for i, r in enumerate(self.rows) if i != index]
        shots = random.Random(self.seed * 1_000_003 + index).sample(pool, self.fewshot)
        parts = [self.render(r, self.path) + self.choice_prefix +
                 str(r[self.choices][r[self.answer]]) for r in shots]
        return self.fewshot_separator.join(parts) + self.fewshot_separator


_REQUIRED = {"multiple_choice": ("data", "prompt", "choices", "answer"),
             "perplexity": (), "generation": ("data", "prompt", "verifier", "answer")}
_HEADER_KEYS = {f.name for f in dataclasses.fields(EvalTask)} - {"path", "rows", "fewshot_rows"}
_SOURCE_KEYS = {"data", "fewshot_data", "source", "skip", "text_field", "max_chars"}
_HEADER_KEYS |= _SOURCE_KEYS
# What each header field must be (checked before use, so a typo is an error naming it).
_TYPES = {"name": str, "kind": str, "prompt": str, "description": str, "choices": str,
          "answer": str, "choice_prefix": str, "fewshot_separator": str, "verifier": str,
          "data": str, "fewshot_data": str, "source": str, "text_field": str, "chat": bool,
          "limit": int, "fewshot": int, "seed": int, "n": int, "max_new_tokens": int,
          "skip": int, "max_chars": int, "temperature": (int, float), "k": (int, list),
          "stop": list}


def _check_types(path: pathlib.Path, header: dict) -> None:
    for key, value in header.items():
        expected = _TYPES[key]
        bad_bool = isinstance(value, bool) and expected is not bool
        if bad_bool or not isinstance(value, expected):
            names = " or ".join(t.__name__ for t in (expected if isinstance(expected, tuple)
                                                     else (expected,)))
            raise TaskError(f"{path}: field {key!r} must be {names}, got {value!r:.60}")
        if key in ("limit", "fewshot", "skip", "max_chars") and value < 0:
            raise TaskError(f"{path}: field {key!r} must be >= 0, got {value}")
    for key in ("k", "stop"):
        items = header.get(key)
        kind = int if key == "k" else str
        if isinstance(items, list) and not all(isinstance(i, kind) and not isinstance(i, bool)
                                               for i in items):
            raise TaskError(f"{path}: field {key!r} must list {kind.__name__}s, got {items!r}")


def shipped_dir() -> pathlib.Path:
    """The directory of the task files shipped with the package."""
    return pathlib.Path(str(importlib.resources.files("llm.eval.tasks")))


def _task_files(dirs: Sequence[str | pathlib.Path]) -> dict[str, pathlib.Path]:
    """Task name → file, over the shipped tasks and `dirs` (a later directory wins)."""
    found = {}
    for directory in (shipped_dir(), *map(pathlib.Path, dirs)):
        if not directory.is_dir():
            raise TaskError(f"task directory {str(directory)!r} does not exist")
        for path in sorted(directory.iterdir()):
            if path.suffix in (".yaml", ".yml") or (path.suffix == ".jsonl"
                                                    and _has_header(path)):
                found[read_header(path).get("name", path.stem)] = path
    return found


def known_tasks(dirs: Sequence[str | pathlib.Path] = ()) -> list[str]:
    """Names of the tasks `load_task` finds (shipped and in `dirs`), sorted."""
    return sorted(_task_files(dirs))


def load_task(name: str, dirs: Sequence[str | pathlib.Path] = ()) -> EvalTask:
    """A task by name (shipped or in `dirs`) or by path to its file; an unknown name is a
    TaskError listing the known ones."""
    path = pathlib.Path(name)
    if path.suffix in TASK_SUFFIXES:
        if not path.is_file():
            raise TaskError(f"task file {name!r} does not exist")
        return read_task(path)
    files = _task_files(dirs)
    if name not in files:
        close = difflib.get_close_matches(name, files, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise TaskError(f"unknown task {name!r}{hint}; known tasks: {', '.join(sorted(files))}"
                        " (or give a path to a .yaml/.jsonl task file)")
    return read_task(files[name])


def _has_header(path: pathlib.Path) -> bool:
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    try:
        return isinstance(json.loads(first), dict) and "task" in json.loads(first)
    except json.JSONDecodeError:
        return False


def read_header(path: pathlib.Path) -> dict:
    """The header of a task file (YAML mapping, or the `task` object of a JSONL's line 1)."""
    try:
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8") as f:
                header = json.loads(f.readline()).get("task")
        else:
            header = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as error:
        raise TaskError(f"{path}: not a readable task file ({error})") from None
    if not isinstance(header, dict):
        raise TaskError(f"{path}: expected a mapping of task fields (name, kind, data, ...)")
    return header


def read_task(path: pathlib.Path) -> EvalTask:
    """Load and check one task file and its rows."""
    header = read_header(path)
    unknown = sorted(set(header) - _HEADER_KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], _HEADER_KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise TaskError(f"{path}: unknown field {unknown[0]!r}{hint}")
    kind = header.get("kind")
    if kind not in KINDS:
        raise TaskError(f"{path}: field 'kind' is {kind!r}; expected one of {', '.join(KINDS)}")
    required = [k for k in _REQUIRED[kind] if k != "data" or path.suffix != ".jsonl"]
    if kind == "perplexity" and "source" not in header and path.suffix != ".jsonl":
        required.append("data")  # text to score: a file, a directory or a JSONL
    for key in ("name", "kind", *required):
        if key not in header:
            raise TaskError(f"{path}: missing field {key!r} (a {kind} task needs "
                            f"{', '.join(('name', 'kind', *required))})")
    _check_types(path, header)
    fields = {k: v for k, v in header.items() if k in _HEADER_KEYS - _SOURCE_KEYS}
    k = header.get("k", [1])
    fields["k"] = tuple(k if isinstance(k, list) else [k])
    fields["stop"] = tuple(header.get("stop", ()))
    if kind == "perplexity":
        rows = _documents(path, header)
    else:
        rows = _rows(path, header.get("data"))
    fewshot_rows = _rows(path, header["fewshot_data"]) if "fewshot_data" in header else ()
    limit = int(header.get("limit", 0))
    task = EvalTask(path=str(path), rows=tuple(rows[:limit] if limit else rows),
                    fewshot_rows=tuple(fewshot_rows), **fields)
    _check(task)
    return task


def _rows(path: pathlib.Path, data: str | None) -> list[dict]:
    """The JSON rows of `data` (relative to the task file), or of the task's own JSONL."""
    source = path if data is None else (path.parent / data)
    skip = 1 if data is None else 0  # a JSONL task file's first line is its header
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise TaskError(f"{path}: field 'data': cannot read {str(source)!r} ({error})") from None
    rows = []
    for number, line in enumerate(lines[skip:], skip + 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise TaskError(f"{source} line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise TaskError(f"{source} line {number}: expected a JSON object")
        rows.append({**row, "_where": f"{source} line {number}"})
    if not rows:
        raise TaskError(f"{source}: no rows")
    return rows


def _documents(path: pathlib.Path, header: dict) -> list[dict]:
    """Perplexity documents {'text', '_where'} from text files, a JSONL or the stdlib."""
    max_chars = int(header.get("max_chars", 0))
    if header.get("source") == "stdlib":
        from llm.data.sources import iter_stdlib_sources

        skip = int(header.get("skip", 0))
        limit = int(header.get("limit", 0))
        docs = []
        for n, (name, text) in enumerate(iter_stdlib_sources(limit=skip + limit or None)):
            if n >= skip:
                docs.append({"text": text, "_where": name})
    elif "source" in header:
        raise TaskError(f"{path}: field 'source' is {header['source']!r}; expected 'stdlib' "
                        "(or give 'data')")
    else:
        source = path.parent / header["data"] if "data" in header else path
        if source.suffix == ".jsonl":
            field = header.get("text_field", "text")
            docs = []
            for row in _rows(path, header.get("data")):
                if not isinstance(row.get(field), str):
                    raise TaskError(f"{row['_where']}: missing text field {field!r}")
                docs.append({"text": row[field], "_where": row["_where"]})
        else:
            files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() \
                else [source]
            if not source.exists():
                raise TaskError(f"{path}: field 'data': {str(source)!r} does not exist")
            docs = [{"text": p.read_text(encoding="utf-8", errors="replace"), "_where": str(p)}
                    for p in files]
    docs = [{**d, "text": d["text"][:max_chars] if max_chars else d["text"]} for d in docs]
    docs = [d for d in docs if d["text"]]
    if not docs:
        raise TaskError(f"{path}: no documents to score")
    return docs


def _check(task: EvalTask) -> None:
    """Field types and per-row fields, each error naming the file (and line) and field."""
    where = task.path
    if task.kind != "perplexity":
        names = [f for _, f, _, _ in string.Formatter().parse(task.prompt) if f]
        for row in task.rows + task.fewshot_rows:
            missing = [f for f in names if f not in row]
            if missing:
                raise TaskError(f"{row['_where']}: missing field {missing[0]!r} (the prompt "
                                "uses it)")
    if task.kind == "multiple_choice":
        for row in task.rows + task.fewshot_rows:
            choices, answer = row.get(task.choices), row.get(task.answer)
            if not isinstance(choices, list) or len(choices) < 2 or \
                    not all(isinstance(c, str) and c for c in choices):
                raise TaskError(f"{row['_where']}: field {task.choices!r} must be a list of "
                                f"at least two non-empty strings, got {choices!r:.80}")
            if not isinstance(answer, int) or isinstance(answer, bool) or \
                    not 0 <= answer < len(choices):
                raise TaskError(f"{row['_where']}: field {task.answer!r} must be the index of "
                                f"the right choice (0..{len(choices) - 1}), got {answer!r}")
        pool = len(task.fewshot_rows) or len(task.rows) - 1
        if task.fewshot > pool:
            raise TaskError(f"{where}: field 'fewshot' is {task.fewshot}, but only {pool} "
                            "rows can serve as examples")
    if task.kind == "generation":
        from llm import rewards

        if task.verifier not in rewards.names():
            raise TaskError(f"{where}: field 'verifier' is {task.verifier!r}; known: "
                            f"{', '.join(rewards.names())}")
        for row in task.rows:
            if task.answer not in row:
                raise TaskError(f"{row['_where']}: missing field {task.answer!r} (the "
                                "verifier's answer)")
        if task.n < 1 or not task.k or not all(1 <= k <= task.n for k in task.k):
            raise TaskError(f"{where}: fields 'n'={task.n} and 'k'={list(task.k)}: expected "
                            "n >= 1 and every k in 1..n")
        if task.n > 1 and task.temperature <= 0:
            raise TaskError(f"{where}: n={task.n} samples need 'temperature' > 0 (greedy "
                            "decoding gives n equal samples)")
