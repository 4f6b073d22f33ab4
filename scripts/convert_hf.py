"""Convert between a Hugging Face model directory and an `llm` workdir.

  python scripts/convert_hf.py --mode=import --hf_dir=H --out=DIR [--dtype=float32]
      writes DIR/config.json ({"model": ...}), DIR/checkpoints/0/ (orbax, the item
      {"state": {"params": <nested dict of arrays>}}) and DIR/tokenizer/, which
      `--config.init_from=DIR` loads.
  python scripts/convert_hf.py --mode=export --checkpoint=DIR --hf_dir=H [--merge_lora]
      [--dtype=bfloat16]
      writes H, a directory transformers loads, with the tokenizer from DIR/tokenizer/.

The output (--out, --hf_dir on export) must be new or an empty directory: nothing is ever
overwritten or mixed. Bad input is one `error: ...` line on stderr and exit code 2.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from absl import app, flags, logging
from flax import nnx

from llm import sharding
from llm.checkpoint import CheckpointError
from llm.hf import convert as hf
from llm.loading import save_params
from llm.model import DTYPES, ModelConfig

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
    from llm import scoring
    from llm.loading import load_model, resolve_step_dir, step_config

    # A reward run exports as a sequence classifier: its score head comes along.
    is_reward = step_config(resolve_step_dir(path))[1].get("task") == "reward"
    loaded = load_model(path, sharding.make_mesh({"fsdp": -1}),
                        build=scoring.add_score_head if is_reward else None)
    tokenizer = str(loaded.tokenizer_dir) if loaded.tokenizer_dir else None
    return loaded.model_cfg, loaded.graphdef, loaded.params, tokenizer


def merge_lora(graphdef: nnx.GraphDef, params: Any) -> Any:
    """Fold LoRA adapters into the base weights (a checkpoint without adapters is an error)."""
    from llm.peft import lora

    if not any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params)):
        raise ConvertError("--merge_lora: this checkpoint has no LoRA adapters")
    return lora.merge_params(graphdef, params)[1]


def has_adapters(params: Any) -> bool:
    """True when the parameters hold LoRA adapters (export needs --merge_lora then)."""
    return any(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params))


def check_flags() -> tuple[str, str]:
    """(mode, output path) from the flags, checked before anything is loaded or written."""
    if MODE.value == "import":
        if not HF_DIR.value or not OUT.value:
            raise ConvertError("--mode=import needs --hf_dir and --out")
        out, out_flag, dtypes = OUT.value, "--out", DTYPES
    else:
        if HF_DIR.value and OUT.value and HF_DIR.value != OUT.value:
            raise ConvertError("--mode=export: --hf_dir and --out both name the output "
                               "directory, differently; give one")
        out = HF_DIR.value or OUT.value
        if not CHECKPOINT.value or not out:
            raise ConvertError("--mode=export needs --checkpoint and --hf_dir")
        out_flag, dtypes = "--hf_dir" if HF_DIR.value else "--out", hf.SAFETENSORS_DTYPES
    if DTYPE.value is not None and DTYPE.value not in dtypes:
        raise ConvertError(f"--dtype={DTYPE.value!r}: expected one of {sorted(dtypes)}")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise ConvertError(f"{out_flag}={out!r}: exists and is not an empty directory; "
                           "the conversion writes a new directory and overwrites nothing")
    return MODE.value, out


def load_checkpoint_flag(path: str) -> tuple[ModelConfig, nnx.GraphDef, Any, str | None]:
    """`load_workdir(--checkpoint)`, its errors naming the flag rather than `init_from`."""
    try:
        return load_workdir(path)
    except CheckpointError as e:
        message = str(e)
        if message.startswith(f"init_from={path!r}"):
            message = f"--checkpoint={path!r}" + message[len(f"init_from={path!r}"):]
        raise ConvertError(message) from None


def convert() -> None:
    """Run the conversion the flags ask for."""
    mode, out = check_flags()
    if mode == "import":
        cfg, _, params, tokenizer_dir = hf.import_hf(
            HF_DIR.value, mesh=sharding.make_mesh({"fsdp": -1}), dtype=DTYPE.value)
        save_params(out, cfg, params, tokenizer_dir)
        print(f"imported {HF_DIR.value} -> {out} ({cfg.family}, {cfg.n_layers} layers)")
        return
    cfg, graphdef, params, tokenizer_dir = load_checkpoint_flag(CHECKPOINT.value)
    if MERGE_LORA.value:
        params = merge_lora(graphdef, params)
    elif has_adapters(params):
        raise ConvertError(f"--checkpoint={CHECKPOINT.value} holds LoRA adapters; pass "
                           "--merge_lora to fold them into the exported weights")
    hf.export_hf(cfg, params, out, dtype=DTYPE.value or "bfloat16",
                 tokenizer_dir=tokenizer_dir)
    print(f"exported {CHECKPOINT.value} -> {out}")


def main(argv: list[str]) -> None:
    """Convert; bad input is one `error:` line on stderr and exit code 2, not a traceback."""
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every save and restore at INFO
    try:
        convert()
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl `flags_parser`: a bad or missing flag is one `error:` line and exit code 2."""
    try:
        rest = flags.FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    problem = ("--mode is required (import or export)" if MODE.value is None else
               f"unexpected argument {rest[1]!r} (every input is a --flag)" if rest[1:] else None)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    return rest


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
