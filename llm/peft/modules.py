"""Walking a built model's modules by path: what LoRA and quantisation both rewrite in place.

Paths are nnx path tuples of attribute names and `nnx.List` indices, written 'a/b/c'
('layers/attn/q_proj' scan-stacked, 'layers/3/attn/q_proj' unrolled).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flax import nnx


class TargetModulesError(ValueError):
    """A target-module regex that is invalid or matches nothing; names the key."""


def module_path(path: tuple[Any, ...]) -> str:
    """'layers/attn/q_proj' from an nnx path tuple."""
    return "/".join(str(k) for k in path)


def get_module(root: nnx.Module, path: tuple[Any, ...]) -> nnx.Module:
    """The submodule at `path` (attribute names and nnx.List indices)."""
    node = root
    for key in path:
        node = node[key] if isinstance(key, int) else getattr(node, key)
    return node


def replace_module(root: nnx.Module, path: tuple[Any, ...], new: nnx.Module) -> None:
    """Set the submodule at `path` to `new`."""
    parent = get_module(root, path[:-1])
    if isinstance(path[-1], int):
        parent[path[-1]] = new
    else:
        setattr(parent, path[-1], new)


def outermost(model: nnx.Module, kinds: tuple[type, ...]
              ) -> Iterator[tuple[tuple[Any, ...], nnx.Module]]:
    """(path, module) of every module of `kinds` not nested inside another one of `kinds`."""
    for path, module in nnx.iter_modules(model):
        if isinstance(module, kinds) and not _inside(path, model, kinds):
            yield path, module


def _inside(path: tuple[Any, ...], root: nnx.Module, kinds: tuple[type, ...]) -> bool:
    node = root
    for key in path[:-1]:
        node = node[key] if isinstance(key, int) else getattr(node, key)
        if isinstance(node, kinds):
            return True
    return False


def select_modules(model: nnx.Module, pattern: str, key: str, candidates: tuple[type, ...],
                   kinds: tuple[type, ...] | None = None) -> list[tuple[Any, ...]]:
    """Paths of outermost `candidates` modules of `kinds` whose path matches `pattern`
    (re.search); a bad or unmatched pattern is an error naming `key` and the choices."""
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise TargetModulesError(f"{key}={pattern!r} is not a valid regex: {e}") from e
    found = [(p, m) for p, m in outermost(model, candidates)
             if kinds is None or isinstance(m, kinds)]
    chosen = [p for p, _ in found if regex.search(module_path(p))]
    if not chosen:
        names = sorted({module_path(p) for p, _ in found})
        raise TargetModulesError(f"{key}={pattern!r} matches no linear module; the model's "
                                 f"are {names}")
    return chosen
