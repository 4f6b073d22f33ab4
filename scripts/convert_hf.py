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

from typing import Any

from absl import app, flags, logging
from flax import nnx

from llm import hf, sharding
from llm.checkpoint import save_params
from llm.model import ModelConfig

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


def load_workdir(path: str, keep_adapters: bool = False
                 ) -> tuple[ModelConfig, nnx.GraphDef, Any, str | None]:
    """(ModelConfig, graphdef, params, tokenizer dir) of a workdir or checkpoints/<step>."""
    from llm.checkpoint import load_model

    loaded = load_model(path, sharding.make_mesh({"fsdp": -1}))
    tokenizer = str(loaded.tokenizer_dir) if loaded.tokenizer_dir else None
    return loaded.model_cfg, loaded.graphdef, loaded.params, tokenizer


def merge_lora(graphdef: nnx.GraphDef, params: Any) -> Any:
    """Fold LoRA adapters into the base weights (a checkpoint without adapters is an error)."""
    from llm import lora

    if not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params)):
        raise ConvertError("--merge_lora: this checkpoint has no LoRA adapters")
    return lora.merge_params(graphdef, params)[1]


def has_adapters(params: Any) -> bool:
    """True when the parameters hold LoRA adapters (export needs --merge_lora then)."""
    return any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params))


def main(argv: list[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
    if MODE.value == "import":
        if not HF_DIR.value or not OUT.value:
            raise ConvertError("--mode=import needs --hf_dir and --out")
        cfg, _, params, tokenizer_dir = hf.import_hf(
            HF_DIR.value, mesh=sharding.make_mesh({"fsdp": -1}), dtype=DTYPE.value)
        save_params(OUT.value, cfg, params, tokenizer_dir)
        print(f"imported {HF_DIR.value} -> {OUT.value} ({cfg.family}, {cfg.n_layers} layers)")
    else:
        out = HF_DIR.value or OUT.value
        if not CHECKPOINT.value or not out:
            raise ConvertError("--mode=export needs --checkpoint and --hf_dir")
        cfg, graphdef, params, tokenizer_dir = load_workdir(CHECKPOINT.value)
        if MERGE_LORA.value:
            params = merge_lora(graphdef, params)
        elif has_adapters(params):
            raise ConvertError(f"--checkpoint={CHECKPOINT.value} holds LoRA adapters; pass "
                               "--merge_lora to fold them into the exported weights")
        hf.export_hf(cfg, params, out, dtype=DTYPE.value or "bfloat16",
                     tokenizer_dir=tokenizer_dir)
        print(f"exported {CHECKPOINT.value} -> {out}")


if __name__ == "__main__":
    flags.mark_flag_as_required("mode")
    app.run(main)
