"""Checksum manifests of a directory's files: written once when the files are final, checked
before they are trusted (a checkpoint at restore, a prepared dataset at each training start).

`checksums.json` maps each file's relative path to its size and xxh3-128 digest. Files are
read in fixed-size chunks, so hashing streams at disk speed and never holds a file in memory.
It lives in `llm/data/` because both the data stack and the checkpointer use it and data is
the ground floor (it imports nothing above it).
"""

from __future__ import annotations

import json
import os
import pathlib

import xxhash

MANIFEST = "checksums.json"
# 1 MiB stays in cache between the read and the hash (8 MiB hashed 30% slower); the buffer
# is no larger than the file, since zero-filling a chunk per small file cost more than
# hashing a checkpoint's ~20 files.
_CHUNK = 1 << 20


def file_digest(path: pathlib.Path) -> str:
    """xxh3-128 hex digest of one file, read in chunks."""
    h = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(max(1, min(_CHUNK, os.fstat(f.fileno()).st_size)))
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            h.update(view[:n])
    return h.hexdigest()


def _files(directory: pathlib.Path, exclude: tuple[str, ...] = ()) -> list[pathlib.Path]:
    """Files under `directory` but the manifest itself and the top-level names in
    `exclude` (scratch folders)."""
    top = (directory / MANIFEST, directory / (MANIFEST + ".tmp"))
    return sorted(p for p in directory.rglob("*") if p.is_file() and p not in top
                  and p.relative_to(directory).parts[0] not in exclude)


def write_manifest(directory: str | os.PathLike, exclude: tuple[str, ...] = ()) -> int:
    """Hash every file under `directory` (but the top-level names in `exclude`) into its
    checksums.json, atomically; returns the bytes hashed."""
    directory = pathlib.Path(directory)
    entries, total = {}, 0
    for path in _files(directory, exclude):
        size = path.stat().st_size
        entries[path.relative_to(directory).as_posix()] = {"size": size,
                                                           "xxh3_128": file_digest(path)}
        total += size
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps({"version": 1, "exclude": list(exclude), "files": entries},
                              indent=1, sort_keys=True))
    tmp.replace(directory / MANIFEST)
    return total


def read_manifest(directory: str | os.PathLike) -> dict | None:
    """The manifest (`files`: {relative path: {size, xxh3_128}}, `exclude`), None when there
    is none; a manifest that does not parse raises ValueError (it is damaged itself)."""
    path = pathlib.Path(directory) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        if manifest["version"] != 1 or not all(
                isinstance(e["size"], int) and isinstance(e["xxh3_128"], str)
                for e in manifest["files"].values()) or not all(
                isinstance(x, str) for x in manifest.get("exclude", [])):
            raise TypeError
        return manifest
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError):
        raise ValueError(f"{path}: damaged checksum manifest") from None


def verify(directory: str | os.PathLike, full: bool = True, extra_ok: bool = False
           ) -> str | None:
    """Check `directory` against its manifest: None when it matches, else one line naming
    the first file that differs (missing, extra unless `extra_ok`, size or content).
    `full=False` compares sizes only (cheap, for large datasets checked at every start).
    Raises FileNotFoundError when there is no manifest."""
    directory = pathlib.Path(directory)
    manifest = read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"{directory / MANIFEST}: no checksum manifest")
    files = manifest["files"]
    present = {p.relative_to(directory).as_posix()
               for p in _files(directory, tuple(manifest.get("exclude", ())))}
    for name in sorted(present - set(files)) if not extra_ok else ():
        return f"{directory / name}: not in the checksum manifest"
    for name, entry in sorted(files.items()):
        path = directory / name
        if name not in present:
            return f"{path}: missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{path}: {size} bytes, expected {entry['size']}"
        if full and file_digest(path) != entry["xxh3_128"]:
            return f"{path}: checksum mismatch (the file's bytes changed after it was written)"
    return None
