"""Orbax checkpoints holding {state, data iterator, loop and task state, config, prepared batch}.

Each step is written to a temporary directory and committed by an atomic rename (orbax), so
a killed run leaves at worst an uncommitted temporary directory, which orbax never lists.
A committed step whose files are missing or truncated is reported and skipped in favour of
the previous one. Parameters are stored as plain nested dicts with string keys, so a
checkpoint does not depend on flax's container classes and restores onto any mesh.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp

from llm import sharding

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint or `init_from` path that cannot be used; the message names it."""


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _names(path: tuple) -> list[str]:
    names = [_key_name(k) for k in path] or ["value"]
    if len(names) > 1 and names[-1] == "value":  # an nnx.Variable's own leaf
        names.pop()
    return names


def to_saveable(tree: Any) -> dict:
    """Any pytree (nnx.State, optax namedtuples, dicts) → nested dicts with string keys."""
    nested: dict = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        node = nested
        names = _names(path)
        for name in names[:-1]:
            node = node.setdefault(name, {})
        node[names[-1]] = leaf
    return nested


def from_saveable(template: Any, saved: dict) -> Any:
    """Inverse of `to_saveable`: leaves of `saved` placed into `template`'s structure."""
    paths, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, _ in paths:
        node = saved
        for name in _names(path):
            node = node[name]
        leaves.append(node)
    return jax.tree_util.tree_unflatten(treedef, leaves)


class Checkpointer:
    """Saves and restores {state, data_iterator, loop, config, prepared} under
    `workdir/checkpoints`; `prepared` is a prepared batch between two of its updates."""

    # orbax's class for a step's temporary directory; tests swap in one that fails on purpose
    temporary_path_class: type | None = None

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            temporary_path_class=self.temporary_path_class)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, loop_state: dict, config: dict,
             prepared: dict | None = None) -> None:
        """Start an (async) save of everything needed to resume at `step`."""
        import grain

        items = dict(
            state=ocp.args.PyTreeSave(to_saveable(state)),
            loop=ocp.args.JsonSave(loop_state),
            config=ocp.args.JsonSave(config),
        )
        if iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointSave(iterator)
        if prepared is not None:
            items["prepared"] = ocp.args.PyTreeSave(prepared)
            items["prepared_spec"] = ocp.args.JsonSave(
                {k: [list(v.shape), str(v.dtype)] for k, v in prepared.items()})
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, template_state: Any, shardings: Any, iterator: Any,
                       mesh: jax.sharding.Mesh | None = None
                       ) -> tuple[int, Any, dict, dict | None] | None:
        """(step, state, loop state, prepared batch or None) of the newest readable step
        (falling back past corrupt ones), or None."""
        for step in reversed(self.steps()):
            try:
                return step, *self.restore(step, template_state, shardings, iterator, mesh)
            except Exception as error:  # a corrupt step: set it aside, use the previous one
                aside = self.directory / f"corrupt_{step}_{int(time.time())}"
                (self.directory / str(step)).rename(aside)
                print(f"checkpoint {self.directory / str(step)} is unreadable "
                      f"({type(error).__name__}: {str(error)[:200]}); moved it to {aside} "
                      "and trying an older one", flush=True)
                self.manager.reload()
        return None

    def restore(self, step: int, template_state: Any, shardings: Any, iterator: Any,
                mesh: jax.sharding.Mesh | None = None) -> tuple[Any, dict, dict | None]:
        """Restore one step onto `shardings` (any mesh); the iterator is restored in place,
        a saved prepared batch onto `mesh`'s batch sharding."""
        import grain

        abstract = to_saveable(jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
            template_state, shardings))
        items = dict(
            state=ocp.args.PyTreeRestore(
                abstract, restore_args=ocp.checkpoint_utils.construct_restore_args(abstract)),
            loop=ocp.args.JsonRestore(),
        )
        if iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointRestore(iterator)
        spec_file = self.directory / str(step) / "prepared_spec" / "metadata"
        prepared_abstract = None
        if spec_file.exists():
            spec = json.loads(spec_file.read_text())
            prepared_abstract = {
                k: jax.ShapeDtypeStruct(tuple(shape), dtype,
                                        sharding=sharding.rows_sharding(mesh, tuple(shape)))
                for k, (shape, dtype) in spec.items()}
            items["prepared"] = ocp.args.PyTreeRestore(
                prepared_abstract,
                restore_args=ocp.checkpoint_utils.construct_restore_args(prepared_abstract))
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        _check_shapes(abstract, restored["state"])
        prepared = dict(restored["prepared"]) if prepared_abstract is not None else None
        return (from_saveable(template_state, restored["state"]), dict(restored["loop"]),
                prepared)

    def wait(self) -> None:
        """Block until async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self.manager.wait_until_finished()
        self.manager.close()


def _check_shapes(abstract: Any, restored: Any) -> None:
    for a, r in zip(jax.tree.leaves(abstract), jax.tree.leaves(restored), strict=True):
        if a.shape != r.shape:
            raise CheckpointError(f"restored shape {r.shape} does not match expected {a.shape}")
