"""Model behaviour that could break: causality, packing isolation, scan == unrolled, cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from llm.model import ModelConfig, ModelConfigError, Transformer, init_cache

TINY = dict(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=24,
            d_ff=160, max_seq_len=64)


def build(**overrides):
    return Transformer(ModelConfig(**{**TINY, **overrides}), nnx.Rngs(0))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_changing_a_token_never_changes_earlier_logits(family):
    model = build(family=family, qk_norm=family == "llama")
    tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, 200)
    base, _ = model(tokens)
    changed = tokens.at[:, 9].set((tokens[:, 9] + 7) % 200)
    after, _ = model(changed)
    np.testing.assert_array_equal(base[:, :9], after[:, :9])
    assert not np.allclose(base[:, 9:], after[:, 9:])


def test_packed_documents_are_isolated():
    model = build()
    tokens = jax.random.randint(jax.random.key(2), (1, 16), 0, 200)
    segments = jnp.array([[1] * 6 + [2] * 10])
    positions = jnp.array([list(range(6)) + list(range(10))])
    base, _ = model(tokens, positions, segments)
    changed = tokens.at[0, 2].set((tokens[0, 2] + 1) % 200)  # edit document 1 only
    after, _ = model(changed, positions, segments)
    np.testing.assert_array_equal(base[0, 6:], after[0, 6:])
    # Document 2 alone gives the same logits as inside the packed row.
    alone, _ = model(tokens[:, 6:], positions[:, 6:])
    np.testing.assert_allclose(alone[0], base[0, 6:], atol=1e-5)


def test_scan_and_unrolled_layers_agree():
    tokens = jax.random.randint(jax.random.key(3), (2, 12), 0, 200)
    scanned, _ = build(scan_layers=True)(tokens)
    unrolled, _ = build(scan_layers=False)(tokens)
    np.testing.assert_allclose(scanned, unrolled, atol=1e-5)


@pytest.mark.parametrize("scan, variant", [
    (True, {}), (False, {}),
    # biases exercise the fused q|k|v decode matmul's concatenated bias
    (True, {"qkv_bias": True}), (True, {"family": "gpt2"})])
def test_cached_decode_equals_full_forward(scan, variant):
    model = build(scan_layers=scan, **variant)
    state = nnx.state(model, nnx.Param)  # biases start at 0: make them count
    noisy = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 * jax.random.normal(jax.random.key(len(path)), x.shape)
        if "bias" in jax.tree_util.keystr(path) else x, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, noisy)
    nnx.update(model, state)
    tokens = jax.random.randint(jax.random.key(4), (2, 10), 0, 200)
    full, _ = model(tokens)
    cache = init_cache(model.cfg, 2, 16)
    logits, cache = model(tokens[:, :6], cache=cache)
    steps = [logits]
    for t in range(6, 10):
        positions = jnp.full((2, 1), t)
        logits, cache = model(tokens[:, t:t + 1], positions, cache=cache)
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5)


def test_padded_vocabulary_is_masked():
    logits, _ = build()(jnp.zeros((1, 4), jnp.int32))
    assert logits.shape[-1] == 256
    assert np.all(np.asarray(logits[..., 200:]) < -1e30)
    assert np.argmax(np.asarray(jax.nn.softmax(logits)), -1).max() < 200


def test_remat_and_dropout_paths_run():
    model = build(remat="dots", resid_dropout=0.1, attn_dropout=0.1, embed_dropout=0.1)
    tokens = jnp.ones((2, 8), jnp.int32)
    a, _ = model(tokens, dropout_rng=jax.random.key(0))
    b, _ = model(tokens, dropout_rng=jax.random.key(1))
    c, _ = model(tokens)
    d, _ = model(tokens)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(c, d)


def test_rope_llama3_scaling_changes_only_low_frequencies():
    from llm.model import rope_inverse_frequencies

    plain = rope_inverse_frequencies(ModelConfig(**TINY, rope_theta=500000.0))
    scaled = rope_inverse_frequencies(ModelConfig(
        **TINY, rope_theta=500000.0, rope_scaling="llama3", rope_factor=8.0,
        rope_original_max_len=64))
    assert scaled[0] == plain[0]  # the highest frequency is untouched
    np.testing.assert_allclose(scaled[-1], plain[-1] / 8.0, rtol=1e-6)


@pytest.mark.parametrize("field,value", [("n_kv_heads", 3), ("head_dim", 7),
                                         ("family", "bert"), ("attention", "flash9")])
def test_bad_model_config_is_one_clear_error(field, value):
    with pytest.raises(ModelConfigError, match=field):
        ModelConfig(**{**TINY, field: value}).validate()


def test_splash_kernel_in_interpret_mode_equals_xla_with_packing():
    import dataclasses

    cfg = ModelConfig(**{**TINY, "n_layers": 1, "head_dim": 128, "max_seq_len": 256})
    graphdef, params = nnx.split(Transformer(cfg, nnx.Rngs(0)))
    splash_graphdef = nnx.split(Transformer(dataclasses.replace(cfg, attention="splash"),
                                            nnx.Rngs(0)))[0]
    tokens = jax.random.randint(jax.random.key(5), (1, 256), 0, 200)
    segments = jnp.array([[1] * 100 + [2] * 156])
    positions = jnp.array([list(range(100)) + list(range(156))])
    xla, _ = nnx.merge(graphdef, params)(tokens, positions, segments)
    splash, _ = nnx.merge(splash_graphdef, params)(tokens, positions, segments)
    np.testing.assert_allclose(splash, xla, atol=1e-4)


def _reference_attention(q_BTHE, k_BSKE, v_BSKE, mask_BTS):
    """Textbook softmax attention, keys repeated per query head, for checking the kernel."""
    group = q_BTHE.shape[2] // k_BSKE.shape[2]
    k_BSHE = jnp.repeat(k_BSKE, group, axis=2)
    v_BSHE = jnp.repeat(v_BSKE, group, axis=2)
    scores_BHTS = jnp.einsum("bthe,bshe->bhts", q_BTHE, k_BSHE) / np.sqrt(q_BTHE.shape[-1])
    scores_BHTS = jnp.where(mask_BTS[:, None], scores_BHTS, -jnp.inf)
    return jnp.einsum("bhts,bshe->bthe", jax.nn.softmax(scores_BHTS, -1), v_BSHE)


@pytest.mark.parametrize("T, blocks", [(7, 1), (128, 4), (256, 8)])
def test_xla_attention_values_and_gradients_match_textbook_attention(T, blocks):
    """Also with the causal query blocks (each skips the keys after it) of longer rows."""
    from llm import attention

    assert len(attention._query_blocks(T, T, causal=True)) == blocks
    B, H, K, E = 2, 4, 2, 8
    rng = np.random.default_rng(0)
    q, k, v, dout = (jnp.asarray(rng.normal(size=(B, T, n, E)), jnp.float32)
                     for n in (H, K, K, H))
    positions = jnp.asarray(np.tile(np.arange(T), (B, 1)))
    # three documents whose boundaries fall inside blocks, and one unpacked row
    segments = jnp.asarray(np.stack([np.repeat([1, 2, 3], [T // 3, T // 3, T - 2 * (T // 3)]),
                                     np.ones(T, int)]))
    mask = attention.visibility_mask(positions, positions, segments, segments)

    def pullback(fn, **kwargs):
        out, vjp = jax.vjp(lambda q, k, v: fn(q, k, v, mask, **kwargs), q, k, v)
        return out, vjp(dout)

    out, grads = pullback(attention.xla_attention, causal=True)
    want_out, want_grads = pullback(_reference_attention)
    np.testing.assert_allclose(out, want_out, atol=1e-5)
    for got, want in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_bad_kv_window_and_non_self_causal_attention_are_clear_errors():
    from llm import attention

    model = build()
    cache = init_cache(model.cfg, 1, 16)
    with pytest.raises(ValueError, match="kv_window=32: expected 1..16"):
        model(jnp.zeros((1, 1), jnp.int32), jnp.zeros((1, 1), jnp.int32), cache=cache,
              kv_window=32)
    with pytest.raises(ValueError, match="pass cache= too"):
        model(jnp.zeros((1, 1), jnp.int32), kv_window=8)
    q = jnp.zeros((1, 4, 4, 8))
    kv = jnp.zeros((1, 6, 2, 8))
    with pytest.raises(ValueError, match="self-attention: 4 queries but 6 keys"):
        attention.xla_attention(q, kv, kv, jnp.ones((1, 4, 6), bool), causal=True)
