"""Convert between a Hugging Face model directory and an `llm` workdir.

  python scripts/convert_hf.py --mode=import --hf_dir=H --out=DIR [--dtype=float32]
      writes DIR/config.json ({"model": ...}), DIR/checkpoints/0/ (orbax, the item
      {"state": {"params": <nested dict of arrays>}}) and DIR/tokenizer/, which
      `--config.init_from=DIR` loads.
  python scripts/convert_hf.py --mode=export --checkpoint=DIR --hf_dir=H [--merge_lora]
      [--dtype=bfloat16]
      writes H, a directory transformers loads, with the tokenizer from DIR/tokenizer/.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import app, flags
from flax import nnx

from llm import hf, sharding
from llm.hf_config import model_config_dict
from llm.model import ModelConfig, Transformer

MODE = flags.DEFINE_enum("mode", None, ["import", "export"], "Direction of the conversion.")
HF_DIR = flags.DEFINE_string("hf_dir", None, "HF model directory: read by import, written "
                             "by export.")
OUT = flags.DEFINE_string("out", None, "Import: the workdir to write (export: an alias for "
                          "--hf_dir).")
CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Export: a workdir (its newest step) or "
                                 "a DIR/checkpoints/<step> directory.")
MERGE_LORA = flags.DEFINE_bool("merge_lora", False, "Export: merge LoRA adapters first.")
DTYPE = flags.DEFINE_string("dtype", None, "Import: parameter dtype (default float32); "
                            "export: safetensors dtype (default bfloat16).")


class ConvertError(ValueError):
    """Bad flags or a checkpoint directory this script cannot read."""


def save_workdir(out: str, cfg: ModelConfig, params: nnx.State,
                 tokenizer_dir: str | None) -> None:
    """Write config.json, checkpoints/0 ({'state': {'params': ...}}) and tokenizer/."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump({"model": model_config_dict(cfg)}, f, indent=2, sort_keys=True)
    with ocp.CheckpointManager(os.path.abspath(os.path.join(out, "checkpoints"))) as manager:
        manager.save(0, args=ocp.args.StandardSave(
            {"state": {"params": nnx.to_pure_dict(params)}}))
        manager.wait_until_finished()
    if tokenizer_dir:
        os.makedirs(os.path.join(out, "tokenizer"), exist_ok=True)
        for name in hf.TOKENIZER_FILES:
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copyfile(os.path.join(tokenizer_dir, name),
                                os.path.join(out, "tokenizer", name))


def _resolve_checkpoint(path: str) -> tuple[str, str, int]:
    """(workdir, checkpoints dir, step) for a workdir or a checkpoints/<step> directory."""
    path = os.path.abspath(path)
    if os.path.basename(path).isdigit():
        ckpt_dir, step = os.path.dirname(path), int(os.path.basename(path))
        return os.path.dirname(ckpt_dir), ckpt_dir, step
    ckpt_dir = os.path.join(path, "checkpoints")
    steps = sorted(int(s) for s in os.listdir(ckpt_dir) if s.isdigit()) \
        if os.path.isdir(ckpt_dir) else []
    if not steps:
        raise ConvertError(f"--checkpoint={path}: no checkpoints/<step> directory")
    return path, ckpt_dir, steps[-1]


def load_workdir(path: str) -> tuple[ModelConfig, nnx.GraphDef, Any, str | None]:
    """(ModelConfig, graphdef, params, tokenizer dir) of a workdir's newest or named step."""
    workdir, ckpt_dir, step = _resolve_checkpoint(path)
    config_path = os.path.join(workdir, "config.json")
    if not os.path.isfile(config_path):
        raise ConvertError(f"--checkpoint={path}: no {config_path} with a 'model' section")
    with open(config_path) as f:
        cfg = ModelConfig.from_dict(json.load(f)["model"], where=f"{config_path}:model")
    mesh = sharding.make_mesh({"fsdp": -1})
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0))))
    shardings = sharding.state_shardings(abstract, mesh)
    target = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          nnx.to_pure_dict(abstract), nnx.to_pure_dict(shardings))
    with ocp.CheckpointManager(ckpt_dir) as manager:
        if MERGE_LORA.value:  # adapters are part of the tree: restore it as saved
            restored = manager.restore(step, args=ocp.args.StandardRestore())
        else:
            item = {"state": {"params": target}}
            restored = manager.restore(step, args=ocp.args.PyTreeRestore(
                item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
                partial_restore=True))
    params = restored["state"]["params"]
    tokenizer = os.path.join(workdir, "tokenizer")
    return cfg, graphdef, params, tokenizer if os.path.isdir(tokenizer) else None


def merge_lora(graphdef: nnx.GraphDef, params: Any) -> Any:
    """Fold LoRA adapters into the base weights with `llm.lora.merge_params`."""
    try:
        from llm import lora
        merge = lora.merge_params
    except (ImportError, AttributeError) as e:
        raise ConvertError("--merge_lora needs llm.lora.merge_params (the LoRA module), "
                           f"which this installation does not provide: {e}") from e
    return merge(graphdef, params)


def main(argv: list[str]) -> None:
    del argv
    if MODE.value == "import":
        if not HF_DIR.value or not OUT.value:
            raise ConvertError("--mode=import needs --hf_dir and --out")
        cfg, _, params, tokenizer_dir = hf.import_hf(
            HF_DIR.value, mesh=sharding.make_mesh({"fsdp": -1}), dtype=DTYPE.value)
        save_workdir(OUT.value, cfg, params, tokenizer_dir)
        print(f"imported {HF_DIR.value} -> {OUT.value} ({cfg.family}, {cfg.n_layers} layers)")
    else:
        out = HF_DIR.value or OUT.value
        if not CHECKPOINT.value or not out:
            raise ConvertError("--mode=export needs --checkpoint and --hf_dir")
        cfg, graphdef, params, tokenizer_dir = load_workdir(CHECKPOINT.value)
        if MERGE_LORA.value:
            params = merge_lora(graphdef, params)
        hf.export_hf(cfg, params, out, dtype=DTYPE.value or "bfloat16",
                     tokenizer_dir=tokenizer_dir)
        print(f"exported {CHECKPOINT.value} -> {out}")


if __name__ == "__main__":
    flags.mark_flag_as_required("mode")
    app.run(main)
