"""A tiny model with a byte-level BPE tokenizer that transformers loads too, saved as a
workdir (and exported to HF), for the evaluation tests."""

from __future__ import annotations

import pathlib

from flax import nnx

from llm.model import ModelConfig, Transformer

SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]
CORPUS = ["The answer is 12. The answer is 7. Question: What is 3 + 4?\nAnswer:",
          "def add(a, b):\n    return a + b\n", "hello world, the quick brown fox jumps",
          "Once upon a time there was a model that scored text."] * 20


def tokenizer_dir(path: pathlib.Path, vocab: int = 320) -> pathlib.Path:
    """A byte-level BPE (tokenizer.json + HF tokenizer_config.json) that adds BOS when
    transformers is asked for special tokens, and never unknowns a byte."""
    import tokenizers
    import transformers

    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=SPECIALS,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>")
    fast.save_pretrained(path)
    return path


def model_config(vocab_size: int, max_seq_len: int = 64) -> ModelConfig:
    """Small, mutually distinct dims (one layer scanned, one not would not load)."""
    return ModelConfig(vocab_size=vocab_size, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2,
                       head_dim=12, d_ff=80, max_seq_len=max_seq_len, init_std=0.1)


def make_workdir(root: pathlib.Path, seed: int = 0, max_seq_len: int = 64,
                 init_std: float = 0.1) -> tuple[pathlib.Path, ModelConfig, object]:
    """(workdir holding a random model + the tokenizer, its config, the split params)."""
    import dataclasses

    from llm.data.tokenizer import Tokenizer
    from llm.loading import save_params

    tok_dir = tokenizer_dir(root / "tokenizer_src")
    cfg = dataclasses.replace(model_config(Tokenizer.load(tok_dir).vocab_size, max_seq_len),
                              init_std=init_std)
    _, params = nnx.split(Transformer(cfg, nnx.Rngs(seed)))
    workdir = save_params(root / "workdir", cfg, params, tok_dir)
    return workdir, cfg, params
