"""Building and loading models: one builder for training and every loader.

`build_model` makes a model born sharded on a mesh: the Transformer, a task's heads on top
(`build`), the base weights from `init_from` (a workdir, a `checkpoints/<step>` directory or
`hf:DIR`; the heads a task declares `fresh` keep their initialisation), then the `peft.*`
quantisation and adapters. `load_model` restores a saved run through the same builder, so a
LoRA run's base is rebuilt exactly as it was trained.

A run's model settings are read from its config's `resolved.model` section (what the loop
resolved, e.g. the tokenizer's vocabulary size), or from `model` in checkpoints written
before that section existed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from llm import sharding
from llm.checkpoint import Checkpointer, CheckpointError, from_saveable, to_saveable
from llm.model import ModelConfig, Transformer
from llm.peft import lora
from llm.peft import methods as peft


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
    path = pathlib.Path(init_from).absolute()
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


def step_config(step_dir: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """(file, contents) of the run config a checkpoint step was saved with."""
    config_file = step_dir / "config" / "metadata"
    if not config_file.exists():  # older layouts keep it beside the checkpoints only
        config_file = step_dir.parent.parent / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{step_dir}: the checkpoint holds no config")
    return config_file, json.loads(config_file.read_text())


def run_model_values(config: dict, where: str) -> dict:
    """The ModelConfig fields a saved run trained with (its resolved section when present)."""
    values = (config.get("resolved") or {}).get("model") or config.get("model")
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: no 'model' section")
    return {k: v for k, v in values.items() if k != "size"}


def build_model(model_cfg: ModelConfig, peft_cfg: Any, mesh: jax.sharding.Mesh,
                rules: dict | None = None, *, seed: int = 0, init_from: str = "",
                build: Callable[[Transformer], nnx.Module] | None = None,
                fresh: Sequence[str] = (), data_tokenizer_dir: Any = None) -> nnx.Module:
    """The model to train or run, born sharded: Transformer, `build`'s heads, base weights
    from `init_from` (modules named in `fresh` keep their initialisation), then `peft.*`."""
    def create() -> nnx.Module:
        return _with_heads(Transformer(model_cfg, nnx.Rngs(params=seed)), build)

    graphdef, full = sharding.init_sharded(create, mesh, rules)
    if init_from:
        loaded = load_model(init_from, mesh, rules)
        if loaded.model_cfg.vocab_size != model_cfg.vocab_size:
            raise CheckpointError(
                f"init_from={init_from}: its vocabulary ({loaded.model_cfg.vocab_size}) "
                f"differs from this run's ({model_cfg.vocab_size})")
        check_same_architecture(loaded.model_cfg, model_cfg, init_from)
        check_same_tokenizer(loaded.tokenizer_dir, data_tokenizer_dir, init_from)
        copy_params(full, loaded.params, f"init_from={init_from}", fresh)
    model = nnx.merge(graphdef, full)
    if peft_cfg.method != "none":  # quantise / wrap the loaded base, then place the result
        model = peft.apply_peft(model, peft_cfg, nnx.Rngs(params=seed + 1))
        graphdef, full = nnx.split(model)
        model = nnx.merge(graphdef, sharding.shard_state(full, mesh, rules))
    return model


def _with_heads(model: Transformer, build: Callable | None) -> nnx.Module:
    return build(model) if build is not None else model


def load_model(init_from: str, mesh: jax.sharding.Mesh | None = None,
               rules: dict | None = None, model_overrides: dict | None = None,
               build: Callable[[Transformer], nnx.Module] | None = None) -> LoadedModel:
    """Parameters (only) from a workdir, `checkpoints/<step>` or `hf:DIR`, sharded on `mesh`;
    `build` adds the heads a task trained (a reward model's score head) to what is restored."""
    if init_from.startswith("hf:"):
        from llm.hf import convert as hf

        model_cfg, graphdef, params, tokenizer_dir = hf.import_hf(init_from[3:], mesh=mesh,
                                                                  rules=rules, build=build)
        return LoadedModel(model_cfg, graphdef, params, tokenizer_dir)
    step_dir = resolve_step_dir(init_from)
    config_file, config = step_config(step_dir)
    values = {**run_model_values(config, str(config_file)), **(model_overrides or {})}
    peft_cfg = _peft_section(config)
    values.update(peft.model_config_overrides(peft_cfg))
    model_cfg = ModelConfig.from_dict(values)
    mesh = mesh or sharding.make_mesh({"data": 1}, jax.devices()[:1])
    if peft_cfg.method == "none":  # every weight comes from the checkpoint: no init needed
        graphdef, abstract = nnx.split(nnx.eval_shape(
            lambda: _with_heads(Transformer(model_cfg, nnx.Rngs(0)), build)))
        params = _restore_params(step_dir, abstract, mesh, rules)
    else:  # the base is rebuilt from the run's own init_from; adapters and heads from here
        heads = head_names(model_cfg, build)
        model = build_model(model_cfg, peft_cfg, mesh, rules, seed=config.get("seed", 0),
                            init_from=config.get("init_from", ""), build=build, fresh=heads)
        trained = nnx.Any(peft.trainable_filter(peft_cfg),
                          *(nnx.PathContains(name) for name in heads))
        graphdef, adapters, rest = nnx.split(model, trained, ...)
        _check_base_hash(step_dir, rest, config.get("init_from"))
        adapters = _restore_params(step_dir, adapters, mesh, rules)
        graphdef, params = nnx.split(nnx.merge(graphdef, adapters, rest))
    workdir = step_dir.parent.parent
    tokenizer_dir = workdir / "tokenizer" if (workdir / "tokenizer").is_dir() else None
    return LoadedModel(model_cfg, graphdef, params, tokenizer_dir, config)


def head_names(model_cfg: ModelConfig, build: Callable | None) -> tuple[str, ...]:
    """The top-level modules `build` adds to a Transformer (a task's heads, e.g. a score
    head): under PEFT they train beside the adapters, so they are restored with them."""
    if build is None:
        return ()
    plain = nnx.state(nnx.eval_shape(lambda: Transformer(model_cfg, nnx.Rngs(0))))
    built = nnx.state(nnx.eval_shape(lambda: build(Transformer(model_cfg, nnx.Rngs(0)))))
    return tuple(sorted(set(built.keys()) - set(plain.keys())))


def _peft_section(config: dict) -> Any:
    import ml_collections

    return ml_collections.ConfigDict(config.get("peft") or {"method": "none"})


def _check_base_hash(step_dir: pathlib.Path, rest: Any, init_from: str | None) -> None:
    loop_file = step_dir / "loop" / "metadata"
    saved = json.loads(loop_file.read_text()).get("base_hash") if loop_file.exists() else None
    if saved and saved != lora.base_hash(rest):
        raise CheckpointError(
            f"{step_dir}: the adapters were trained on a different base than "
            f"init_from={init_from!r} gives now (base hash mismatch)")


def copy_params(target: Any, source: Any, where: str, fresh: Sequence[str] = ()) -> None:
    """Copy base weights into a freshly built state, checking that every weight is found with
    its shape (a layout mismatch such as scanned vs unrolled layers is an error, not random
    weights); modules named in `fresh` and prefix-tuning slots may be absent and stay fresh."""
    fresh_names = {*fresh, *lora.PREFIX_NAMES}
    found = dict(nnx.to_flat_state(source))
    missing = []
    for path, variable in nnx.to_flat_state(target):
        name = "/".join(map(str, path))
        if path not in found:
            if not fresh_names.intersection(map(str, path)):
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


# Settings that change what the loaded weights compute; shapes alone would not catch them.
_ARCHITECTURE_KEYS = ("family", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim",
                      "d_ff", "norm_eps", "rope_theta", "tie_embeddings", "qk_norm",
                      "qkv_bias", "sliding_window")
# May differ on purpose (context extension); reported, not refused.
_ROPE_SCALING_KEYS = ("rope_scaling", "rope_factor", "rope_low_freq_factor",
                      "rope_high_freq_factor", "rope_original_max_len", "max_seq_len")


def check_same_architecture(loaded: ModelConfig, run: ModelConfig, init_from: str) -> None:
    """Refuse a base whose architecture differs from the run's model config (one error
    listing every difference); print rope-scaling / context differences."""
    def differences(keys):
        return [f"model.{k}={getattr(run, k)!r} (init_from has {getattr(loaded, k)!r})"
                for k in keys if getattr(run, k) != getattr(loaded, k)]

    wrong = differences(_ARCHITECTURE_KEYS)
    if wrong:
        raise CheckpointError(f"init_from={init_from}: the run's model differs from the "
                              f"loaded one: {'; '.join(wrong)}; set these keys to match")
    for line in differences(_ROPE_SCALING_KEYS):
        print(f"init_from={init_from}: this run uses {line}")


def check_same_tokenizer(base_dir: Any, data_dir: Any, init_from: str) -> None:
    """Refuse data tokenised with another vocabulary than the base's (equal sizes alone would
    let token ids silently mean different pieces)."""
    from llm.data.tokenizer import HF_FILE, SPM_FILE

    if base_dir is None or data_dir is None:
        return
    for name in (SPM_FILE, HF_FILE):
        base, data = pathlib.Path(base_dir) / name, pathlib.Path(data_dir) / name
        if base.is_file() and data.is_file():
            if base.read_bytes() != data.read_bytes():
                raise CheckpointError(
                    f"init_from={init_from}: its tokenizer ({base}) differs from the one the "
                    f"data was prepared with ({data}); prepare the data with "
                    "data.tokenizer.path set to the base's tokenizer")
            return


def _restore_params(step_dir: pathlib.Path, template: Any, mesh, rules) -> Any:
    """The `params` subtree of a checkpoint's state, restored onto `template`'s shardings."""
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
        from llm.data.tokenizer import Tokenizer

        (workdir / "tokenizer").mkdir(exist_ok=True)
        for source in Tokenizer.files(tokenizer_dir):  # byte for byte
            shutil.copyfile(source, workdir / "tokenizer" / source.name)
    return workdir
