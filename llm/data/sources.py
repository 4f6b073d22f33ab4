"""Reading raw inputs as a stream of records, each tagged with its source file and line.

A text file is one document (line 1); a JSONL line or a Parquet row is one record (1-based
line or row number). `.gz` and `.zst` compression is undone on the fly. A record's
*kind* is decided by its fields: `text` (the configured text field), `chat` (`messages`),
`preference` (`prompt`/`chosen`/`rejected`, optional numeric `margin`), `unpaired`
(`prompt`/`completion`/`label` true or false: KTO's rows) or `prompt` (`prompt`, optional
`answer`).
A labelled preference row whose `outcome` is `tie` or `skip` (no pair decided; see
`llm/label/store.py`) is counted in `ReadStats` as `preference_tie` / `preference_skip` and
not yielded. Bad input (malformed JSON, missing or mistyped fields, bytes or escapes that
are not valid UTF-8) raises `DataError` naming file and line, or, with `skip_bad=True`, is
counted in `ReadStats` by reason and skipped. Nothing is ever written to an input.

Shards of one file: an uncompressed JSONL file is cut into byte ranges, each shard reading
only the lines that start in its own range (a cheap newline count per range, the
`count_newlines` pre-pass, gives the line numbers); a compressed JSONL file cannot be cut,
so every shard decompresses it and parses every n-th line; a Parquet file's rows are dealt
out the same way after Arrow decodes them, so only a shard's own rows become Python objects.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import pathlib
import sysconfig
import tokenize
import zlib
from collections.abc import Iterator, Sequence

import numpy as np

from llm.data import DataError

TEXT_SUFFIXES = (".txt", ".text", ".md", ".rst", ".py")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
COMPRESSED = (".gz", ".zst")
KINDS = ("text", "chat", "preference", "unpaired", "prompt")
# Labelled preference rows that decide no pair (llm/label writes them): counted, never paired.
UNPAIRED_OUTCOMES = ("tie", "skip")
ROLES = ("system", "user", "assistant")


@dataclasses.dataclass(frozen=True)
class Record:
    """One input record: where it came from and its fields (`text` for plain documents)."""

    source: str
    line: int
    kind: str
    fields: dict


@dataclasses.dataclass
class ReadStats:
    """Bad records skipped (only filled when skip_bad=True): counts by reason, and where."""

    bad: dict = dataclasses.field(default_factory=dict)
    skipped: list = dataclasses.field(default_factory=list)  # (source, line, reason)

    def add(self, reason: str, source: str, line: int) -> None:
        """Count one skipped record."""
        self.bad[reason] = self.bad.get(reason, 0) + 1
        self.skipped.append((source, line, reason))


class _Bad(Exception):
    """A record that cannot be used: `reason` is the report's key, the message the error's."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def _base_suffix(path: pathlib.Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def input_paths(inputs: Sequence[str] | str) -> list[pathlib.Path]:
    """The paths named by comma-separated `inputs` (files or directories), as given."""
    if isinstance(inputs, str):
        inputs = inputs.split(",")
    return [pathlib.Path(p.strip()).expanduser() for p in inputs if p.strip()]


def list_input_files(inputs: Sequence[str] | str, key: str = "data.inputs"
                     ) -> list[pathlib.Path]:
    """Expand comma-separated paths / directories into a sorted, stable list of input files.

    A directory contributes its files with a known suffix; a file named outright must have
    one too (read as text otherwise, a .csv or .json array would silently become one document).
    """
    paths = input_paths(inputs)
    if not paths:
        raise DataError(f"no inputs given (set {key})")
    known = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
    accepted = f"{', '.join(known)}, optionally .gz/.zst"
    files: list[pathlib.Path] = []
    for path in paths:
        if not path.exists():
            raise DataError(f"{key} names an input path that does not exist", str(path))
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file()
                           and not any(part.startswith(".") for part in p.relative_to(path).parts)
                           and _base_suffix(p) in known)
            if not found:
                raise DataError(f"directory holds no input files ({accepted})", str(path))
            files.extend(found)
        elif _base_suffix(path) in known:
            files.append(path)
        else:
            raise DataError(f"{key}: unknown input format {_base_suffix(path) or '(no suffix)'};"
                            f" expected {accepted}", str(path))
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
    if ("chosen" in fields and "rejected" in fields) or (
            "prompt" in fields and ("chosen" in fields or "rejected" in fields)):
        return "preference"  # a prompt with only one response is a broken pair, not RL
    if "completion" in fields or ("prompt" in fields and "label" in fields):
        return "unpaired"  # a labelled row without its label is a broken KTO row, not RL
    if text_field in fields:
        return "text"
    if "prompt" in fields:
        return "prompt"
    return None


def _string(value, name: str) -> str:
    """`value` as a str that encodes to UTF-8, or _Bad (missing, not text, invalid UTF-8)."""
    if isinstance(value, bytes | bytearray | memoryview):  # e.g. a Parquet binary column
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            raise _Bad("non_utf8", f"'{name}' holds invalid UTF-8 at byte {e.start}") from None
    if value is None:
        raise _Bad("missing_field", f"field '{name}' is missing (null)")
    if not isinstance(value, str):
        raise _Bad("bad_field", f"'{name}' is a {type(value).__name__}, expected a string")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate from a "\udXXX" JSON escape
            raise _Bad("non_utf8", f"'{name}' holds an unpaired surrogate "
                       f"U+{ord(value[e.start]):04X}, which is not valid UTF-8") from None
    return value


def _parse(fields: dict, text_field: str) -> tuple[str, dict]:
    """(kind, fields with every used field checked); raises _Bad for an unusable record."""
    kind = classify(fields, text_field)
    if kind is None:
        raise _Bad("missing_field", f"no known field: expected '{text_field}', 'messages', "
                   f"'prompt'/'chosen'/'rejected', 'prompt'/'completion'/'label' or 'prompt'; "
                   f"got {sorted(fields)[:8]}")
    if kind == "text":
        return kind, {"text": _string(fields[text_field], text_field)}
    fields = dict(fields)
    if kind == "chat":
        msgs = fields["messages"]
        if not isinstance(msgs, list) or not msgs:
            raise _Bad("bad_field", "'messages' must be a non-empty list")
        checked = []
        for n, m in enumerate(msgs):
            if not isinstance(m, dict) or "role" not in m or "content" not in m:
                raise _Bad("missing_field", f"message {n} needs 'role' and 'content'")
            role = _string(m["role"], f"messages[{n}].role")
            if role not in ROLES:
                raise _Bad("bad_field", f"unknown role {role!r} in message {n} (expected "
                           "system, user or assistant)")
            checked.append(dict(m, role=role, content=_string(m["content"],
                                                                f"messages[{n}].content")))
        fields["messages"] = checked
        return kind, fields
    for key in _TEXT_FIELDS[kind]:
        if key not in fields:
            raise _Bad("missing_field", f"{kind} record is missing field '{key}'")
        fields[key] = _string(fields[key], key)
    if kind == "unpaired":
        if "label" not in fields:
            raise _Bad("missing_field", "unpaired (KTO) record is missing field 'label' "
                       "(true: a desirable completion, false: an undesirable one)")
        if not isinstance(fields["label"], bool):
            raise _Bad("bad_field", f"'label' is a {type(fields['label']).__name__}, "
                       "expected true or false")
    if kind == "preference" and "margin" in fields:
        margin = fields["margin"]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not np.isfinite(
                margin):
            raise _Bad("bad_field", f"'margin' is {margin!r}, expected a finite number")
        fields["margin"] = float(margin)
    return kind, fields


_TEXT_FIELDS = {"preference": ("prompt", "chosen", "rejected"),
                "unpaired": ("prompt", "completion"), "prompt": ("prompt",)}


def is_record_file(path: pathlib.Path) -> bool:
    """Whether the file holds many records (JSONL, Parquet) rather than one document."""
    return _base_suffix(path) in JSONL_SUFFIXES + PARQUET_SUFFIXES


def splits_by_bytes(path: pathlib.Path) -> bool:
    """Whether shards cut this file into byte ranges (uncompressed JSONL)."""
    return _base_suffix(path) in JSONL_SUFFIXES and path.suffix.lower() not in COMPRESSED


def byte_range(size: int, part: tuple[int, int]) -> tuple[int, int]:
    """[start, end) of shard k of n in a file of `size` bytes; it owns lines starting there."""
    k, n = part
    return size * k // n, size * (k + 1) // n


def count_newlines(path: pathlib.Path, part: tuple[int, int]) -> int:
    """Newlines in shard `part`'s byte range of an uncompressed file (no decoding)."""
    return _newlines_between(path, *byte_range(path.stat().st_size, part))


def _newlines_between(path: pathlib.Path, start: int, end: int) -> int:
    count = 0
    with _open_binary(path) as f:
        f.seek(start)
        left = end - start
        while left > 0:
            block = f.read(min(left, 1 << 22))
            if not block:
                break
            count += block.count(b"\n")
            left -= len(block)
    return count


def _range_lines(path: pathlib.Path, part: tuple[int, int], lines_before: int | None
                 ) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of the lines that start in shard `part`'s byte range."""
    start, end = byte_range(path.stat().st_size, part)
    if lines_before is None:  # newlines before `start`; the pipeline passes them in
        lines_before = _newlines_between(path, 0, start)
    with _open_binary(path) as f:
        lineno, pos = lines_before, start
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":  # the range begins inside a line: its owner is the
                tail = f.readline()  # previous shard, so skip to the next line start
                pos += len(tail)
                lineno += 1
        while pos < end:
            raw = f.readline()
            if not raw:
                return
            lineno += 1
            pos += len(raw)
            yield lineno, raw


def _every_nth_line(path: pathlib.Path, part: tuple[int, int]) -> Iterator[tuple[int, bytes]]:
    """(line number, raw line) of lines k, k + n, ... of a (compressed) file."""
    k, n = part
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):  # noqa: B007 - read after the loop
                if lineno % n == k:
                    yield lineno, raw
    except _read_errors(path) as e:
        raise DataError(f"unreadable (corrupt or truncated?) after line {lineno}: {e}",
                        str(path), lineno + 1) from e


def _read_errors(path: pathlib.Path) -> tuple[type[BaseException], ...]:
    """What reading (and decompressing) `path` raises when its bytes are damaged."""
    errors: tuple[type[BaseException], ...] = (OSError, EOFError, zlib.error)
    if path.suffix.lower() == ".zst":
        try:
            import zstandard
        except ImportError:  # then _open_binary has already said so
            return errors
        errors += (zstandard.ZstdError,)
    return errors


def read_records(path: pathlib.Path, text_field: str = "text", skip_bad: bool = False,
                 stats: ReadStats | None = None, part: tuple[int, int] = (0, 1),
                 lines_before: int | None = None) -> Iterator[Record]:
    """Stream the records of one input file (see the module docstring).

    `part=(k, n)` keeps shard k's share of n, so n workers split one file without parsing
    each other's lines: the lines starting in byte range k (uncompressed JSONL; pass
    `lines_before`, the newlines before that range, or they are counted here), else the
    lines (rows) whose number is k modulo n. Line numbers are the file's own either way.
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
    lines = (_range_lines(path, part, lines_before) if splits_by_bytes(path) and part[1] > 1
             else _every_nth_line(path, part))
    for lineno, raw in lines:
        if not raw.strip():
            continue
        if lineno == 1:
            raw = raw.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark
        try:
            fields = json.loads(raw.decode("utf-8"))
            if not isinstance(fields, dict):
                raise ValueError("expected a JSON object per line")
        except (UnicodeDecodeError, ValueError) as e:
            reason = "non_utf8" if isinstance(e, UnicodeDecodeError) else "malformed_json"
            if skip_bad:
                stats.add(reason, src, lineno)
                continue
            raise DataError(f"{reason.replace('_', ' ')}: {e}; expected one JSON object "
                            "per line", src, lineno) from e
        yield from _record(src, lineno, fields, text_field, skip_bad, stats)


def _record(src, lineno, fields, text_field, skip_bad, stats) -> Iterator[Record]:
    if fields.get("outcome") in UNPAIRED_OUTCOMES:
        stats.add(f"preference_{fields['outcome']}", src, lineno)
        return
    try:
        kind, fields = _parse(fields, text_field)
    except _Bad as bad:
        if skip_bad:
            stats.add(bad.reason, src, lineno)
            return
        raise DataError(str(bad), src, lineno) from None
    yield Record(src, lineno, kind, fields)


def _read_text_file(path: pathlib.Path, skip_bad: bool, stats: ReadStats) -> str | None:
    """A whole text file, decoded like Python decodes source (.py) or as strict UTF-8."""
    try:
        with _open_binary(path) as f:
            data = f.read()
    except _read_errors(path) as e:
        raise DataError(f"unreadable (corrupt or truncated?): {e}", str(path)) from e
    encoding = "utf-8"
    if _base_suffix(path) == ".py":
        try:
            encoding, _ = tokenize.detect_encoding(io.BytesIO(data).readline)
        except SyntaxError as e:
            if skip_bad:
                stats.add("bad_encoding", str(path), 1)
                return None
            raise DataError(f"bad source encoding declaration: {e}", str(path)) from e
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as e:
        if skip_bad:
            stats.add("non_utf8", str(path), 1)
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
    k, n = part
    first = 1
    for batch in pf.iter_batches(batch_size=1024):
        rows = np.arange(first, first + batch.num_rows)
        first += batch.num_rows
        if n > 1:  # only this shard's rows become Python objects
            mine = np.flatnonzero(rows % n == k)
            rows, batch = rows[mine], batch.take(mine)
        for row, fields in zip(rows.tolist(), batch.to_pylist(), strict=True):
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
