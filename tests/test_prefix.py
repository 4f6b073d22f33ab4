"""Prefix tuning must-holds: a fresh gated prefix is the base model; training moves only it."""

import dataclasses

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from peft_helpers import TINY, tokens
from peft_helpers import forward as _forward

from llm.model import Transformer
from llm.peft import lora
from llm.peft import methods as peft


def prefix_cfg(prefix_len=6):
    cfg = peft.peft_section()
    cfg.method, cfg.prefix_len = "prefix", prefix_len
    return cfg


def prefix_model_over(base: Transformer, cfg) -> Transformer:
    """A prefix model built the loop's way, holding `base`'s weights."""
    model_cfg = dataclasses.replace(base.cfg, **peft.model_config_overrides(cfg))
    model = Transformer(model_cfg, nnx.Rngs(1))
    nnx.update(model, nnx.state(base, nnx.Param))
    return peft.apply_peft(model, cfg, nnx.Rngs(2))


@pytest.mark.parametrize("scan", [True, False])
def test_fresh_prefix_equals_base_exactly(scan):
    base = Transformer(dataclasses.replace(TINY, scan_layers=scan), nnx.Rngs(0))
    model = prefix_model_over(base, prefix_cfg())
    want = _forward(*nnx.split(base), tokens())
    got = _forward(*nnx.split(model), tokens())
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    adapters = lora.adapter_state(nnx.state(model))
    names = {p[-1] for p, _ in nnx.to_flat_state(adapters)}
    assert names == {"prefix_k", "prefix_v", "prefix_gate"}


def test_training_changes_only_prefix_params():
    cfg = prefix_cfg()
    base = Transformer(TINY, nnx.Rngs(0))
    model = prefix_model_over(base, cfg)
    graphdef, params, frozen = nnx.split(model, peft.trainable_filter(cfg), ...)
    before = jax.tree.map(np.array, frozen)

    def loss_fn(params, batch):
        logits, _ = nnx.merge(graphdef, params, frozen)(batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    opt = optax.adam(5e-2)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = jax.tree.map(np.array, params)
    losses = []
    for _ in range(10):
        params, opt_state, loss = step(params, opt_state, tokens())
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 0.02, losses
    for (path, b), (_, a) in zip(nnx.to_flat_state(before), nnx.to_flat_state(frozen),
                                 strict=True):
        np.testing.assert_array_equal(np.asarray(a[...]), b[...], err_msg=str(path))
    trained = {p[-1] for p, v in nnx.to_flat_state(params)}
    assert trained == {"prefix_k", "prefix_v", "prefix_gate"}
    for (path, s), (_, e) in zip(nnx.to_flat_state(start), nnx.to_flat_state(params),
                                 strict=True):
        assert not np.array_equal(s[...], np.asarray(e[...])), path  # gate opened, k/v moved


def test_prefix_config_errors():
    base = Transformer(TINY, nnx.Rngs(0))
    with pytest.raises(peft.PeftConfigError, match=r"peft\.prefix_len"):
        peft.apply_peft(base, prefix_cfg(), nnx.Rngs(1))  # built without the override
    with pytest.raises(peft.PeftConfigError, match=r"peft\.prefix_len"):
        peft.model_config_overrides(prefix_cfg(prefix_len=0))
    assert peft.model_config_overrides(prefix_cfg(prefix_len=5)) == {"prefix_len": 5}
