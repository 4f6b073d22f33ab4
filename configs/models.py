"""Model sizes by name: `configs/<task>.py:model=NAME` fills `config.model` from here."""

from __future__ import annotations

import difflib

import ml_collections

from llm.model import ModelConfig

_LLAMA = dict(family="llama", norm_eps=1e-5, rope_theta=10_000.0, tie_embeddings=False)

SIZES: dict[str, dict] = {
    # Small, mutually distinct dims that every mesh axis of size 2 divides: a transposed
    # weight or swapped axis fails loudly in tests.
    "tiny": dict(_LLAMA, vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                 head_dim=24, d_ff=160, max_seq_len=256),
    # Six layers compile in seconds unrolled, and unrolled steps run ~11% faster on CPU: no
    # stacked residuals to zero-fill and update (scan pays off in compile time for big models).
    "small": dict(_LLAMA, vocab_size=8192, d_model=256, n_layers=6, n_heads=8, n_kv_heads=4,
                  head_dim=32, d_ff=704, max_seq_len=1024, scan_layers=False),
    "125m": dict(_LLAMA, vocab_size=32000, d_model=768, n_layers=12, n_heads=12,
                 n_kv_heads=12, head_dim=64, d_ff=2048, max_seq_len=2048),
    "350m": dict(_LLAMA, vocab_size=32000, d_model=1024, n_layers=24, n_heads=16,
                 n_kv_heads=16, head_dim=64, d_ff=2816, max_seq_len=2048),
    "1b": dict(_LLAMA, vocab_size=32000, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
               head_dim=64, d_ff=8192, max_seq_len=4096, rope_theta=500_000.0),
    "llama3_8b": dict(_LLAMA, vocab_size=128256, d_model=4096, n_layers=32, n_heads=32,
                      n_kv_heads=8, head_dim=128, d_ff=14336, max_seq_len=8192,
                      rope_theta=500_000.0, rope_scaling="llama3", rope_factor=8.0,
                      rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                      rope_original_max_len=8192),
    "gpt2_tiny": dict(family="gpt2", vocab_size=512, d_model=64, n_layers=2, n_heads=4,
                      n_kv_heads=4, head_dim=24, d_ff=160, max_seq_len=256,
                      tie_embeddings=True),
    "gpt2": dict(family="gpt2", vocab_size=50257, d_model=768, n_layers=12, n_heads=12,
                 n_kv_heads=12, head_dim=64, d_ff=3072, max_seq_len=1024,
                 tie_embeddings=True),
}


# `model=init_from`: the architecture of `init_from` (hf:DIR or a workdir), read when the run
# starts; the section's other keys (dtype, remat, attention, ...) stay the run's.
INIT_FROM = "init_from"


def model_config(size: str) -> ml_collections.ConfigDict:
    """The full `model` section for a size name (every ModelConfig field present)."""
    if size == INIT_FROM:
        return ml_collections.ConfigDict(dict(model_config("tiny"), size=INIT_FROM))
    if size not in SIZES:
        close = difflib.get_close_matches(size, SIZES, n=3, cutoff=0.4)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ValueError(f"model={size!r}: unknown model size{hint}; known: {', '.join(SIZES)}")
    values = ModelConfig(**SIZES[size]).__dict__.copy()
    return ml_collections.ConfigDict(dict(size=size, **values))
