"""Orbax checkpoints holding {state, data iterator, loop state, config}; model loading.

Each step is written to a temporary directory and committed by an atomic rename (orbax), so
a killed run leaves at worst an uncommitted temporary directory, which orbax never lists.
A committed step whose files are missing or truncated is reported and skipped in favour of
the previous one. Parameters are stored as plain nested dicts with string keys, so a
checkpoint does not depend on flax's container classes and restores onto any mesh.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint._src.path import atomicity

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


def _crash_path_class(crash_step: int) -> type:
    """Test-only fault injection: die after a step's files are written, before its commit."""

    class CrashBeforeCommit(atomicity.AtomicRenameTemporaryPath):
        async def finalize(self, *args, **kwargs):
            if self.get_final().name == str(crash_step):
                os._exit(137)  # as SIGKILL would, with the temporary directory complete
            return await super().finalize(*args, **kwargs)

    return CrashBeforeCommit


class Checkpointer:
    """Saves and restores {state, data_iterator, loop, config} under `workdir/checkpoints`."""

    def __init__(self, directory: str | os.PathLike, keep: int = 3, async_save: bool = True,
                 crash_before_commit_step: int = -1):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save,
            temporary_path_class=(_crash_path_class(crash_before_commit_step)
                                  if crash_before_commit_step >= 0 else None),
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        """Committed steps, oldest first."""
        self.manager.reload()
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, iterator: Any, loop_state: dict,
             config: dict) -> None:
        """Start an (async) save of everything needed to resume at `step`."""
        import grain

        items = dict(
            state=ocp.args.PyTreeSave(to_saveable(state)),
            loop=ocp.args.JsonSave(loop_state),
            config=ocp.args.JsonSave(config),
        )
        if iterator is not None:
            items["data_iterator"] = grain.checkpoint.CheckpointSave(iterator)
        self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore_latest(self, template_state: Any, shardings: Any, iterator: Any
                       ) -> tuple[int, Any, dict] | None:
        """Restore the newest readable step (falling back past corrupt ones), or None."""
        for step in reversed(self.steps()):
            try:
                return step, *self.restore(step, template_state, shardings, iterator)
            except Exception as error:  # a corrupt step: set it aside, use the previous one
                aside = self.directory / f"corrupt_{step}_{int(time.time())}"
                (self.directory / str(step)).rename(aside)
                print(f"checkpoint {self.directory / str(step)} is unreadable "
                      f"({type(error).__name__}: {str(error)[:200]}); moved it to {aside} "
                      "and trying an older one", flush=True)
                self.manager.reload()
        return None

    def restore(self, step: int, template_state: Any, shardings: Any, iterator: Any
                ) -> tuple[Any, dict]:
        """Restore one step onto `shardings` (any mesh); the iterator is restored in place."""
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
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        _check_shapes(abstract, restored["state"])
        return from_saveable(template_state, restored["state"]), dict(restored["loop"])

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


# ----------------------------------------------------------------------------------------
# Loading a model for inference, fine-tuning (`init_from`) or export.
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A model restored from a workdir, a checkpoint step directory or `hf:DIR`."""

    model_cfg: Any
    graphdef: Any
    params: Any
    tokenizer_dir: pathlib.Path | None
    config: dict | None = None


def resolve_step_dir(init_from: str) -> pathlib.Path:
    """A workdir (its newest committed step) or a `checkpoints/<step>` directory."""
    path = pathlib.Path(init_from)
    if not path.exists():
        raise CheckpointError(f"init_from={init_from!r}: no such directory")
    if (path / "checkpoints").is_dir():
        steps = sorted(int(p.name) for p in (path / "checkpoints").iterdir()
                       if p.name.isdigit() and (p / "state").is_dir())
        if not steps:
            raise CheckpointError(f"init_from={init_from!r}: the workdir has no checkpoint")
        return path / "checkpoints" / str(steps[-1])
    if (path / "state").is_dir():
        return path
    raise CheckpointError(
        f"init_from={init_from!r}: expected a training workdir, a checkpoints/<step> "
        "directory or hf:DIR")


def load_model(init_from: str, mesh: jax.sharding.Mesh | None = None,
               rules: dict | None = None,
               model_overrides: dict | None = None) -> LoadedModel:
    """Parameters (only) from a workdir, `checkpoints/<step>` or `hf:DIR`, sharded on `mesh`."""
    from llm import sharding
    from llm.model import ModelConfig, Transformer

    if init_from.startswith("hf:"):
        from llm.hf import convert as hf

        model_cfg, graphdef, params, tokenizer_dir = hf.import_hf(init_from[3:], mesh=mesh,
                                                                  rules=rules)
        return LoadedModel(model_cfg, graphdef, params, tokenizer_dir)
    step_dir = resolve_step_dir(init_from)
    config_file = step_dir / "config" / "metadata"
    if not config_file.exists():  # older layouts keep it beside the checkpoints only
        config_file = step_dir.parent.parent / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{step_dir}: the checkpoint holds no config")
    config = json.loads(config_file.read_text())
    if "model" not in config:
        raise CheckpointError(f"{config_file}: no 'model' section")
    values = {k: v for k, v in config["model"].items() if k != "size"}
    values.update(model_overrides or {})
    peft_cfg = config.get("peft") or {"method": "none"}
    if peft_cfg["method"] != "none":
        params, graphdef, model_cfg = _load_peft_run(config, values, step_dir, mesh, rules)
    else:
        model_cfg = ModelConfig.from_dict(values)
        mesh = mesh or sharding.make_mesh({"data": 1}, jax.devices()[:1])
        graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(model_cfg,
                                                                          nnx.Rngs(0))))
        params = _restore_params(step_dir, abstract, mesh, rules)
    workdir = step_dir.parent.parent
    tokenizer_dir = workdir / "tokenizer" if (workdir / "tokenizer").is_dir() else None
    return LoadedModel(model_cfg, graphdef, params, tokenizer_dir, config)



def copy_params(target: Any, source: Any, where: str) -> None:
    """Copy base weights into a fresh (possibly prefix-extended) state, checking that every
    base weight is found with its shape, so a layout mismatch (e.g. scanned vs unrolled
    layers) is an error rather than silently random weights."""
    from llm.peft import lora

    found = dict(nnx.to_flat_state(source))
    missing = []
    for path, variable in nnx.to_flat_state(target):
        name = "/".join(map(str, path))
        if path not in found:
            if path[-1] not in lora.PREFIX_NAMES:  # new trainable prefixes start fresh
                missing.append(name)
            continue
        if found[path].shape != variable.shape:
            raise CheckpointError(f"{where}: {name} has shape {found[path].shape}, "
                                  f"expected {variable.shape}")
        variable.set_value(found[path][...])
    if missing:
        raise CheckpointError(f"{where}: {len(missing)} weights of this model are not in the "
                              f"checkpoint, e.g. {', '.join(missing[:3])} (is model.scan_layers "
                              "or the model family different?)")


def _restore_params(step_dir: pathlib.Path, template: Any, mesh, rules) -> Any:
    """The `params` subtree of a checkpoint's state, restored onto `template`'s shardings."""
    from llm import sharding

    shardings = sharding.state_shardings(template, mesh, rules)
    target = {"params": to_saveable(jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), template,
        shardings))}
    try:
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / "state", args=ocp.args.PyTreeRestore(
                target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))
    except Exception as error:
        raise CheckpointError(f"{step_dir}: cannot restore parameters for this model "
                              f"({type(error).__name__}: {str(error)[:300]})") from error
    return from_saveable(template, restored["params"])


def _load_peft_run(config: dict, values: dict, step_dir: pathlib.Path, mesh, rules):
    """A LoRA / QLoRA / prefix run: its base (from the run's init_from), then its adapters."""
    import ml_collections

    from llm import peft, sharding
    from llm.model import ModelConfig, Transformer
    from llm.peft import lora

    peft_cfg = ml_collections.ConfigDict(config["peft"])
    values = {**values, **peft.model_config_overrides(peft_cfg)}
    model_cfg = ModelConfig.from_dict(values)
    mesh = mesh or sharding.make_mesh({"data": 1}, jax.devices()[:1])
    graphdef, full = sharding.init_sharded(
        lambda: Transformer(model_cfg, nnx.Rngs(params=config.get("seed", 0))), mesh, rules)
    if config.get("init_from"):
        base = load_model(config["init_from"], mesh, rules)
        copy_params(full, base.params, f"{step_dir}: its init_from={config['init_from']}")
    model = peft.apply_peft(nnx.merge(graphdef, full), peft_cfg,
                            nnx.Rngs(params=config.get("seed", 0) + 1))
    graphdef, adapters, rest = nnx.split(model, peft.trainable_filter(peft_cfg), ...)
    loop_file = step_dir / "loop" / "metadata"
    saved_hash = json.loads(loop_file.read_text()).get("base_hash") if loop_file.exists() \
        else None
    if saved_hash and saved_hash != lora.base_hash(rest):
        raise CheckpointError(
            f"{step_dir}: the adapters were trained on a different base than "
            f"init_from={config.get('init_from')!r} gives now (base hash mismatch)")
    adapters = _restore_params(step_dir, adapters, mesh, rules)
    graphdef, params = nnx.split(nnx.merge(graphdef, adapters, rest))
    return params, graphdef, model_cfg


def save_params(workdir: str | os.PathLike, model_cfg: Any, params: Any,
                tokenizer_dir: str | os.PathLike | None = None, step: int = 0) -> pathlib.Path:
    """Write a workdir that `init_from=DIR` and `load_model` read: params, config, tokenizer."""
    import shutil

    workdir = pathlib.Path(workdir).absolute()
    if workdir.exists() and (not workdir.is_dir() or any(workdir.iterdir())):
        # its config.json, tokenizer/ or checkpoints would be overwritten or mixed with ours
        raise CheckpointError(f"{workdir}: exists and is not an empty directory; choose a new "
                              "directory")
    config = {"model": dataclasses.asdict(model_cfg)}
    workdir.mkdir(parents=True, exist_ok=True)
    checkpointer = Checkpointer(workdir / "checkpoints", keep=1, async_save=False)
    checkpointer.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave({"params": to_saveable(params)}),
        config=ocp.args.JsonSave(config)), force=True)
    checkpointer.close()
    (workdir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    if tokenizer_dir is not None and pathlib.Path(tokenizer_dir).is_dir():
        from llm.hf import convert as hf

        (workdir / "tokenizer").mkdir(exist_ok=True)
        for name in hf.TOKENIZER_FILES:
            source = pathlib.Path(tokenizer_dir) / name
            if source.is_file():
                shutil.copyfile(source, workdir / "tokenizer" / name)
    return workdir
