"""LoRA must-holds: exact at init, base untouched by training, merge, adapter checkpoints."""

import dataclasses
import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx
from peft_helpers import TINY, tokens
from peft_helpers import forward as _forward

from llm import sharding
from llm.model import Transformer
from llm.peft import lora
from llm.peft import methods as peft


# Mutually distinct widths (q 128->64, k/v 128->32, o 64->128, mlp 128<->192).
def lora_cfg(**overrides):
    cfg = peft.peft_section()
    cfg.method = "lora"
    cfg.rank, cfg.alpha = 4, 8.0
    cfg.update(overrides)
    return cfg


def logits(model_or_graphdef, *states, batch=None):
    """Jitted forward (eager op-by-op is slow on a shared CPU)."""
    if states:
        graphdef, state = model_or_graphdef, nnx.merge_state(*states)
    else:
        graphdef, state = nnx.split(model_or_graphdef)
    return _forward(graphdef, state, tokens() if batch is None else batch)


def make_step(graphdef, opt):
    """A hand-written training step in the loop's shape: grads w.r.t. params only."""
    def loss_fn(params, frozen, batch):
        logits, _ = nnx.merge(graphdef, params, frozen)(batch[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch[:, 1:]).mean()

    @jax.jit
    def step(params, opt_state, frozen, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, frozen, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def train(model, peft_cfg, steps=8, lr=3e-2):
    graphdef, params, frozen = nnx.split(model, peft.trainable_filter(peft_cfg), ...)
    opt = optax.adam(lr)
    opt_state = opt.init(params)
    step = make_step(graphdef, opt)
    losses = []
    for _ in range(steps):
        params, opt_state, loss = step(params, opt_state, frozen, tokens())
        losses.append(float(loss))
    return graphdef, params, frozen, opt_state, losses


@pytest.mark.parametrize("scan", [True, False])
def test_fresh_lora_equals_base_exactly(scan):
    cfg = dataclasses.replace(TINY, scan_layers=scan)
    model = Transformer(cfg, nnx.Rngs(0))
    base = logits(model)
    peft.apply_peft(model, lora_cfg(dropout=0.1), nnx.Rngs(1))
    out = logits(model)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(base))
    adapters = lora.adapter_state(nnx.state(model))
    n_targets = 7 if scan else 14
    assert len(jax.tree.leaves(adapters)) == 2 * n_targets
    q = model.layers.attn.q_proj if scan else model.layers[0].attn.q_proj
    lead = (2,) if scan else ()
    assert q.lora_a.shape == (*lead, 128, 4) and q.lora_b.shape == (*lead, 4, 64)
    assert q.lora_a.get_metadata()["axes"] == ("embed", None)
    assert q.lora_b.get_metadata()["axes"] == (None, "heads")
    assert not np.any(np.asarray(q.lora_b[...])) and np.any(np.asarray(q.lora_a[...]))
    assert not isinstance(model.lm_head, lora.LoRADense)  # default targets skip the head


def test_scaling_and_target_regex():
    model = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(model, lora_cfg(target_modules=r"attn/q_proj$", rank=4, alpha=8.0,
                                    rslora=True), nnx.Rngs(1))
    assert isinstance(model.layers.attn.q_proj, lora.LoRADense)
    assert not isinstance(model.layers.attn.k_proj, lora.LoRADense)
    assert model.layers.attn.q_proj.scale == pytest.approx(8.0 / 2.0)  # alpha / sqrt(r)
    plain = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(plain, lora_cfg(rank=4, alpha=8.0), nnx.Rngs(1))
    assert plain.layers.mlp.up_proj.scale == pytest.approx(2.0)  # alpha / r


@pytest.mark.parametrize("overrides,key", [
    ({"target_modules": r"no_such_module"}, "peft.target_modules"),
    ({"target_modules": r"("}, "peft.target_modules"),
    ({"rank": 0}, "peft.rank"),
    ({"rank": -2}, "peft.rank"),
    ({"method": "adapterz"}, "peft.method"),
])
def test_bad_config_is_one_clear_error(overrides, key):
    model = Transformer(TINY, nnx.Rngs(0))
    with pytest.raises(peft.PeftConfigError, match=key.replace(".", r"\.")):
        peft.apply_peft(model, lora_cfg(**overrides), nnx.Rngs(1))


@pytest.fixture(scope="module")
def trained():
    model = Transformer(TINY, nnx.Rngs(0))
    base_state = jax.tree.map(np.array, nnx.state(model, nnx.Param))
    peft.apply_peft(model, lora_cfg(), nnx.Rngs(1))
    graphdef, params, frozen, opt_state, losses = train(model, lora_cfg())
    return base_state, graphdef, params, frozen, opt_state, losses


def test_training_moves_adapters_only(trained):
    base_state, graphdef, params, frozen, opt_state, losses = trained
    assert losses[-1] < losses[0] - 0.05, losses
    # Every base parameter is bit-identical (paths gain '/base/' under a LoRADense).
    after = {lora.module_path(p).replace("/base/", "/"): np.asarray(v[...])
             for p, v in nnx.to_flat_state(nnx.filter_state(frozen, nnx.Param))}
    before = {lora.module_path(p): v[...] for p, v in nnx.to_flat_state(base_state)}
    assert after.keys() == before.keys()
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)
    # Only adapters are trainable and carry optimiser state.
    assert all(isinstance(v, nnx.LoRAParam) for _, v in nnx.to_flat_state(params))
    n_adapter = sum(x.size for x in jax.tree.leaves(params))
    assert sum(x.size for x in jax.tree.leaves(opt_state)) == 2 * n_adapter + 1  # adam mu, nu
    assert any(np.any(np.asarray(v[...])) for p, v in nnx.to_flat_state(params)
               if p[-1] == "lora_b")


def test_merged_logits_equal_unmerged(trained):
    _, graphdef, params, frozen, _, _ = trained
    unmerged = logits(graphdef, params, frozen, batch=tokens(seed=3))
    merged_graphdef, merged = lora.merge_params(graphdef, params, frozen)
    model = nnx.merge(merged_graphdef, merged)
    assert not any(isinstance(m, lora.LoRADense) for _, m in nnx.iter_modules(model))
    assert "layers/attn/q_proj/kernel" in {lora.module_path(p) for p, _ in
                                           nnx.to_flat_state(merged)}
    out = logits(merged_graphdef, merged, batch=tokens(seed=3))
    again = logits(graphdef, params, frozen, batch=tokens(seed=3))  # inputs not mutated
    np.testing.assert_array_equal(np.asarray(again), np.asarray(unmerged))
    np.testing.assert_allclose(np.asarray(out), np.asarray(unmerged), atol=2e-5, rtol=1e-5)


def test_adapter_checkpoint_roundtrip_and_checks(trained, tmp_path):
    _, graphdef, params, frozen, _, _ = trained
    full = nnx.merge_state(params, frozen)
    digest = lora.base_hash(full)
    assert digest == lora.base_hash(full)  # stable
    size = lora.save_adapters(str(tmp_path / "adapters"), lora.adapter_state(params),
                              "/ckpt/base", digest)
    with open(tmp_path / "full.npz", "wb") as f:
        np.savez(f, **{lora.module_path(p): np.asarray(v[...])
                       for p, v in nnx.to_flat_state(full)})
    full_size = os.path.getsize(tmp_path / "full.npz")
    assert size < 0.15 * full_size, (size, full_size)

    # Load onto a fresh LoRA model over the same base: same logits as the trained one.
    model = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(model, lora_cfg(), nnx.Rngs(7))
    graphdef2, state2 = nnx.split(model)
    loaded = lora.load_adapters(str(tmp_path / "adapters"), graphdef2, state2)
    want = logits(graphdef, params, frozen, batch=tokens(seed=4))
    got = logits(graphdef2, loaded, batch=tokens(seed=4))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))

    # A different base, or adapters whose shapes do not fit: one clear error each.
    other = Transformer(TINY, nnx.Rngs(5))
    peft.apply_peft(other, lora_cfg(), nnx.Rngs(7))
    with pytest.raises(lora.LoRAConfigError, match="trained on base '/ckpt/base'"):
        lora.load_adapters(str(tmp_path / "adapters"), *nnx.split(other))
    wide = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(wide, lora_cfg(rank=8), nnx.Rngs(7))
    with pytest.raises(lora.LoRAConfigError, match=r"does not fit.*lora_a: checkpoint shape"):
        lora.load_adapters(str(tmp_path / "adapters"), *nnx.split(wide))


def test_dropout_uses_the_step_key():
    model = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(model, lora_cfg(dropout=0.5), nnx.Rngs(1))
    graphdef, params, frozen = nnx.split(model, nnx.LoRAParam, ...)
    params = jax.tree.map(lambda x: x + 0.1, params)  # make B non-zero
    evaluate = lambda fz: logits(graphdef, params, fz)  # noqa: E731
    off1, off2 = evaluate(frozen), evaluate(frozen)
    np.testing.assert_array_equal(off1, off2)  # zero keys: no dropout
    on1 = evaluate(peft.with_dropout_rng(frozen, jax.random.key(1)))
    on2 = evaluate(peft.with_dropout_rng(frozen, jax.random.key(2)))
    assert not np.allclose(on1, off1) and not np.allclose(on1, on2)
    keys = nnx.filter_state(peft.with_dropout_rng(frozen, jax.random.key(1)),
                            lora.LoRADropoutKey)
    layer_keys = keys["layers"]["attn"]["q_proj"]["dropout_key"][...]
    assert layer_keys.shape == (2, 2) and not np.array_equal(layer_keys[0], layer_keys[1])


def test_lora_on_8_device_mesh_matches_unsharded():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    model = Transformer(TINY, nnx.Rngs(0))
    peft.apply_peft(model, lora_cfg(), nnx.Rngs(1))
    graphdef, params, frozen = nnx.split(model, nnx.LoRAParam, ...)
    params = jax.tree.map(lambda x: x + 0.01, params)
    want = logits(graphdef, params, frozen)
    p_shard = sharding.state_shardings(params, mesh)
    f_shard = sharding.state_shardings(frozen, mesh)
    spec = p_shard["layers"]["attn"]["q_proj"]["lora_a"].spec
    assert tuple(spec) == (None, "fsdp", None), spec
    assert tuple(p_shard["layers"]["attn"]["q_proj"]["lora_b"].spec) == (None, None, "tensor")
    params, frozen = jax.device_put(params, p_shard), jax.device_put(frozen, f_shard)
    batch = jax.device_put(tokens(), sharding.batch_sharding(mesh))
    got = jax.jit(lambda p, f, t: nnx.merge(graphdef, p, f)(t)[0])(params, frozen, batch)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=1e-5)
    # One sharded training step keeps the adapters on their shardings.
    opt = optax.adam(1e-2)
    step = make_step(graphdef, opt)
    new_params, _, loss = step(params, opt.init(params), frozen, batch)
    assert np.isfinite(float(loss))
    assert new_params["layers"]["attn"]["q_proj"]["lora_a"][...].sharding.spec == spec
