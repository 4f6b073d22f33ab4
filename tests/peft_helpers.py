"""The tiny model and helpers shared by the LoRA, QLoRA and prefix tests."""

import jax
from flax import nnx

from llm.model import ModelConfig

TINY = ModelConfig(vocab_size=256, d_model=128, n_layers=2, n_heads=4, n_kv_heads=2,
                   head_dim=16, d_ff=192, max_seq_len=64)

forward = jax.jit(lambda graphdef, state, batch: nnx.merge(graphdef, state)(batch)[0],
                  static_argnums=0)


def tokens(seed=0, batch=4, length=17):
    """Random token ids for TINY."""
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, TINY.vocab_size)
