"""Real-model demo stage `import`: SmolLM2-135M-Instruct as a Hugging Face directory, and what
this project reads of it (architecture, special tokens, chat template)."""

from __future__ import annotations

from llm.demo.context import Context

NAME = "import"
DESCRIPTION = "SmolLM2-135M-Instruct from its GGUF file to a Hugging Face directory"


def run(ctx: Context) -> dict:
    """Build the HF directory once; its model config and tokenizer as this project reads them."""
    from llm.data.tokenizer import Tokenizer
    from llm.demo.smollm2 import model
    from llm.demo.smollm2.model import hf_dir
    from llm.hf.convert import hf_model_config

    path = model.build(hf_dir(ctx.workdir))
    cfg = hf_model_config(str(path))
    tok = Tokenizer.load(path)
    return {"layers": cfg.n_layers, "width": cfg.d_model, "vocab": cfg.vocab_size,
            "tokens": tok.special_tokens, "eos_ids": tok.eos_ids,
            "template": tok.chat_template_source}


def headline(result: dict) -> str:
    """The table cell: the architecture and the special tokens read."""
    return (f"{result['layers']} layers x {result['width']}, vocabulary {result['vocab']}; "
            f"EOS {result['tokens'].get('eos_token')} (ids {list(result['eos_ids'])}), "
            "its own chat template")
