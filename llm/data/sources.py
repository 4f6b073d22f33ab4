"""Reading raw inputs as a stream of records, each tagged with its source file and line.

A text file is one document (line 1); a JSONL line or a Parquet row is one record (1-based
line or row number). `.gz` and `.zst` compression is undone on the fly. A record's
*kind* is decided by its fields: `text` (the configured text field), `chat` (`messages`),
`preference` (`prompt`/`chosen`/`rejected`) or `prompt` (`prompt`, optional `answer`).
Bad input raises `DataError` naming file and line, or, with `skip_bad=True`, is counted in
`ReadStats` and skipped. Nothing is ever written to an input.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pathlib
import sysconfig
import tokenize
from collections.abc import Iterator, Sequence

from llm.data import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSED = (".gz", ".zst")
KINDS = ("text", "chat", "preference", "prompt")


@dataclasses.dataclass(frozen=True)
class Record:
    """One input record: where it came from and its fields (`text` for plain documents)."""

    source: str
    line: int
    kind: str
    fields: dict


@dataclasses.dataclass
class ReadStats:
    """Bad records skipped, by reason (only filled when skip_bad=True)."""

    bad: dict = dataclasses.field(default_factory=dict)

    def add(self, reason: str) -> None:
        """Count one skipped record."""
        self.bad[reason] = self.bad.get(reason, 0) + 1


def _base_suffix(path: pathlib.Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def list_input_files(inputs: Sequence[str] | str) -> list[pathlib.Path]:
    """Expand comma-separated paths / directories into a sorted, stable list of input files."""
    if isinstance(inputs, str):
        inputs = [p for p in inputs.split(",") if p.strip()]
    if not inputs:
        raise DataError("no inputs given (set data.inputs or data.path)")
    files: list[pathlib.Path] = []
    for raw in inputs:
        path = pathlib.Path(raw.strip()).expanduser()
        if not path.exists():
            raise DataError("input path does not exist", str(path))
        if path.is_dir():
            known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts)
                           and _base_suffix(p) in known)
            if not found:
                raise DataError(f"directory holds no input files ({', '.join(known)}, "
                                "optionally .gz/.zst)", str(path))
            files.extend(found)
        else:
            files.append(path)
    return files


def _open_binary(path: pathlib.Path) -> io.BufferedIOBase:
    suffix = path.suffix.lower()
    if suffix == ".gz":
        return gzip.open(path, "rb")
    if suffix == ".zst":
        try:
            import zstandard
        except ImportError as e:
            raise DataError("reading .zst needs `pip install zstandard`", str(path)) from e
        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(open(path, "rb")))
    return open(path, "rb")  # noqa: SIM115 - the caller closes it


def classify(fields: dict, text_field: str) -> str | None:
    """The kind of a JSON record, or None when it has none of the known fields."""
    if "messages" in fields:
        return "chat"
    if "chosen" in fields and "rejected" in fields:
        return "preference"
    if text_field in fields:
        return "text"
    if "prompt" in fields:
        return "prompt"
    return None


def _check(fields: dict, kind: str, text_field: str) -> str | None:
    """Why a record of this kind is malformed, or None."""
    if kind == "text":
        return None if isinstance(fields[text_field], str) else f"'{text_field}' is not a string"
    if kind == "chat":
        msgs = fields["messages"]
        if not isinstance(msgs, list) or not msgs:
            return "'messages' must be a non-empty list"
        for m in msgs:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str)
                    and isinstance(m.get("content"), str)):
                return "each message needs string 'role' and 'content'"
            if m["role"] not in ("system", "user", "assistant"):
                return f"unknown role {m['role']!r} (expected system, user or assistant)"
        return None
    keys = ("prompt", "chosen", "rejected") if kind == "preference" else ("prompt",)
    for key in keys:
        if not isinstance(fields.get(key), str):
            return f"missing or non-string field '{key}'"
    return None


def read_records(path: pathlib.Path, text_field: str = "text", skip_bad: bool = False,
                 stats: ReadStats | None = None, part: tuple[int, int] = (0, 1)
                 ) -> Iterator[Record]:
    """Stream the records of one input file (see the module docstring).

    `part=(k, n)` keeps only records whose line (row) number is k modulo n, skipped before
    they are decoded, so n workers split one file without parsing each other's lines.
    """
    stats = stats if stats is not None else ReadStats()
    src = str(path)
    suffix = _base_suffix(path)
    if suffix in PARQUET_SUFFIXES:
        yield from _read_parquet(path, text_field, skip_bad, stats, part)
        return
    if suffix not in JSONL_SUFFIXES:
        text = _read_text_file(path, skip_bad, stats)
        if text is not None:
            yield Record(src, 1, "text", {"text": text})
        return
    with _open_binary(path) as f:
        for lineno, raw in enumerate(f, start=1):
            if lineno % part[1] != part[0] or not raw.strip():
                continue
            try:
                line = raw.decode("utf-8")
                fields = json.loads(line)
                if not isinstance(fields, dict):
                    raise ValueError("expected a JSON object per line")
            except (UnicodeDecodeError, ValueError) as e:
                reason = "non_utf8" if isinstance(e, UnicodeDecodeError) else "malformed_json"
                if skip_bad:
                    stats.add(reason)
                    continue
                raise DataError(f"{reason.replace('_', ' ')}: {e}; expected one JSON object "
                                "per line", src, lineno) from e
            yield from _record(src, lineno, fields, text_field, skip_bad, stats)


def _record(src, lineno, fields, text_field, skip_bad, stats) -> Iterator[Record]:
    kind = classify(fields, text_field)
    problem = (f"no known field: expected '{text_field}', 'messages', 'prompt'/'chosen'/"
               f"'rejected' or 'prompt'; got {sorted(fields)[:8]}") if kind is None else \
        _check(fields, kind, text_field)
    if problem is not None:
        if skip_bad:
            stats.add("missing_field")
            return
        raise DataError(problem, src, lineno)
    if kind == "text":
        fields = {"text": fields[text_field]}
    yield Record(src, lineno, kind, fields)


def _read_text_file(path: pathlib.Path, skip_bad: bool, stats: ReadStats) -> str | None:
    """A whole text file, decoded like Python decodes source (.py) or as strict UTF-8."""
    with _open_binary(path) as f:
        data = f.read()
    encoding = "utf-8"
    if _base_suffix(path) == ".py":
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError as e:
            if skip_bad:
                stats.add("bad_encoding")
                return None
            raise DataError(f"bad source encoding declaration: {e}", str(path)) from e
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        if skip_bad:
            stats.add("non_utf8")
            return None
        line = data[: e.start].count(b"\n") + 1
        raise DataError(f"invalid {encoding} bytes at byte {e.start}; expected {encoding} "
                        "text", str(path), line) from e
    if text.startswith("\ufeff"):
        text = text[1:]
    return text


def _read_parquet(path, text_field, skip_bad, stats, part) -> Iterator[Record]:
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise DataError("reading Parquet needs `pip install pyarrow`", str(path)) from e
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several exception types for a bad file
        raise DataError(f"not a readable Parquet file: {e}", str(path)) from e
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for fields in batch.to_pylist():
            row += 1
            if row % part[1] != part[0]:
                continue
            yield from _record(str(path), row, fields, text_field, skip_bad, stats)


def stdlib_corpus_dir() -> pathlib.Path:
    """The directory of the Python standard library's own source (the demo's corpus)."""
    return pathlib.Path(sysconfig.get_paths()["stdlib"])


def iter_stdlib_sources(limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(path, text) of the stdlib's .py files (no tests/site-packages), decoded as Python does."""
    root = stdlib_corpus_dir()
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3"}
    count = 0
    for path in sorted(root.rglob("*.py")):
        if skip & set(path.relative_to(root).parts):
            continue
        try:
            with tokenize.open(path) as f:
                text = f.read()
        except (SyntaxError, UnicodeDecodeError, OSError):
            continue  # a deliberately broken file in the stdlib is not corpus text
        yield str(path), text
        count += 1
        if limit is not None and count >= limit:
            return
