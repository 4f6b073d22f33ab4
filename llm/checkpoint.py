"""Orbax checkpoints holding {state, data iterator, loop and task state, config, prepared batch}.

Each step is written to a temporary directory and committed by an atomic rename (orbax), so
a killed run leaves at worst an uncommitted temporary directory, which orbax never lists.
After the commit, a checksum manifest of every file of the step is written into it
(`llm/data/checksums.py`) and checked before a restore: a committed step whose files are
missing, truncated or changed is set aside with one line naming the file, and the previous
step is used. Steps written before manifests existed are restored with a warning.
Parameters are stored as plain nested dicts with string keys, so a checkpoint does not depend
on flax's container classes and restores onto any mesh.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import os
import pathlib
import re
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint._src.path import atomicity

from llm import sharding
from llm.data import checksums

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint or `init_from` path that cannot be used; the message names it."""


class ReshardError(RuntimeError):
    """A checkpoint written by another process count whose data position cannot be moved
    to this one: the run is refused (the step is sound, so it is never set aside)."""


# grain's data-iterator file, one per process (grain/_src/python/checkpoint/handler.py)
_ITERATOR_FILE = re.compile(r"process_(\d+)-of-(\d+)\.json")


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


class ChecksummedPath(atomicity.AtomicRenameTemporaryPath):
    """orbax's atomic rename, then the committed step's checksum manifest (on the primary
    process, which alone finalizes; every process's files are in place by then). Hashing
    runs on orbax's commit thread for async saves, off the training path."""

    async def finalize(self, *args, **kwargs):
        await super().finalize(*args, **kwargs)
        final = pathlib.Path(str(self.get_final()))
        if final.name.isdigit():  # a step, not one of its items (orbax finalizes both)
            await asyncio.to_thread(checksums.write_manifest, final)


@contextlib.contextmanager
def _quiet_libraries():
    """Silence orbax / TensorStore / asyncio logging while a possibly corrupt step is read:
    a failure is reported once, in one line, by the caller."""
    loggers = [logging.getLogger(n) for n in ("absl", "asyncio", "orbax", "jax")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


class Checkpointer:
    """Saves and restores {state, data_iterator, loop, config, prepared} under
    `workdir/checkpoints`; `prepared` is a prepared batch between two of its updates."""

    # orbax's class for a step's temporary directory; tests swap in one that fails on purpose
    temporary_path_class: type = ChecksummedPath

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
                       mesh: jax.sharding.Mesh | None = None, reshardable: bool = False
                       ) -> tuple[int, Any, dict, dict | None] | None:
        """(step, state, loop state, prepared batch or None) of the newest readable step
        (setting aside corrupt ones, one line each), or None."""
        for step in reversed(self.steps()):
            try:
                with _quiet_libraries():
                    return step, *self.restore(step, template_state, shardings, iterator, mesh,
                                               reshardable)
            except ReshardError:
                raise
            except Exception as error:  # a corrupt step: set it aside, use the previous one
                self._set_aside(step, error)
        return None

    def _set_aside(self, step: int, error: Exception) -> None:
        """Move an unreadable step out of orbax's view (primary process) and say why."""
        path = self.directory / str(step)
        aside = self.directory / f"corrupt_{step}_{int(time.time())}"
        reason = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        if not isinstance(error, CheckpointError):
            reason = f"{type(error).__name__}: {reason}"
        if jax.process_index() == 0:
            path.rename(aside)
        if jax.process_count() > 1:  # every process sees the same steps afterwards
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices(f"set_aside_{step}")
        print(f"checkpoint {path} is unreadable ({reason}); moved it to {aside.name}, "
              "trying an older one", flush=True)
        self.manager.reload()

    def verify(self, step: int) -> None:
        """Raise CheckpointError naming the first file of `step` that differs from its
        checksum manifest; warn (and pass) when the step predates manifests."""
        path = self.directory / str(step)
        try:
            problem = checksums.verify(path)
        except FileNotFoundError:
            print(f"checkpoint {path} has no checksum manifest (written before checksums "
                  "existed, or the run died while hashing it): restoring it unverified",
                  flush=True)
            return
        except ValueError as error:
            raise CheckpointError(str(error)) from None
        if problem is not None:
            raise CheckpointError(problem)

    def saved_process_count(self, step: int) -> int | None:
        """How many processes wrote `step`'s data-iterator state (None: it holds none)."""
        found = [_ITERATOR_FILE.fullmatch(p.name)
                 for p in (self.directory / str(step) / "data_iterator").glob("*.json")]
        counts = {int(m.group(2)) for m in found if m}
        return max(counts) if counts else None

    def resharded_iterator_state(self, step: int, reshardable: bool) -> dict | None:
        """None when `step` was written by this run's process count; else the one data
        position its processes saved, for this count's iterators (`reshardable`: the
        state counts global batches, the same on every process), or ReshardError."""
        saved, now = self.saved_process_count(step), jax.process_count()
        if saved is None or saved == now:
            return None
        where = self.directory / str(step)
        what = f"checkpoint {where} was written by {saved} processes and this run has {now}"
        if not reshardable:
            raise ReshardError(
                f"{what}; this task's data iterator keeps a position per process, which "
                f"cannot be moved to {now}. Restart with {saved} processes "
                f"(JAX_NUM_PROCESSES={saved}), or use a new workdir")
        states = []
        for index in range(saved):
            file = where / "data_iterator" / f"process_{index}-of-{saved}.json"
            if not file.exists():
                raise CheckpointError(f"{file}: missing (the step's other processes wrote "
                                      "theirs)")
            states.append(json.loads(file.read_text()))
        differs = [i for i, state in enumerate(states) if state != states[0]]
        if differs:
            raise ReshardError(
                f"{what}; its processes saved different data positions (process 0: "
                f"{states[0]}, process {differs[0]}: {states[differs[0]]}), so there is no "
                f"one position to resume from. Restart with {saved} processes")
        if jax.process_index() == 0:
            print(f"{what}: resuming the data stream at its global position {states[0]}",
                  flush=True)
        return states[0]

    def restore(self, step: int, template_state: Any, shardings: Any, iterator: Any,
                mesh: jax.sharding.Mesh | None = None, reshardable: bool = False
                ) -> tuple[Any, dict, dict | None]:
        """Restore one step onto `shardings` (any mesh); the iterator is restored in place
        (from another process count only when `reshardable`), a saved prepared batch onto
        `mesh`'s batch sharding; raises CheckpointError when a file differs from the step's
        checksum manifest, ReshardError when the process count changed and cannot."""
        moved = None
        if iterator is not None:
            moved = self.resharded_iterator_state(step, reshardable)
        # The checksums are read beside orbax's own reading, so a restore costs about the
        # slower of the two; what orbax restored is used only once they match.
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            verified = pool.submit(self.verify, step)
            try:
                restored = self._restore(step, template_state, shardings,
                                         iterator if moved is None else None, mesh)
            except Exception:
                verified.result()  # a checksum failure is the clearer reason
                raise
            verified.result()
        if moved is not None:
            iterator.set_state(moved)
            iterator.start_prefetch()  # as grain's own restore does
        return restored

    def _restore(self, step: int, template_state: Any, shardings: Any, iterator: Any,
                 mesh: jax.sharding.Mesh | None) -> tuple[Any, dict, dict | None]:
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
