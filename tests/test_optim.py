"""Optimiser chain: schedules, decay mask, and accumulation == one big batch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from synthetic_task import SyntheticTask, packed_rows

from configs.base import optim_section
from llm import optim
from llm.model import ModelConfig, Transformer
from llm.train import state as state_lib
from llm.train.guard import UpdateGuard

CFG = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=24, d_ff=160, max_seq_len=64)


def one_update(grad_accum: int, batch: dict):
    section = optim_section()
    section.warmup_steps = 0
    tx, schedule = optim.make_optimizer(section, 10)
    graphdef, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))
    guard = UpdateGuard(tx, skip_spikes=False, spike_sigma=6.0, spike_warmup=1,
                        spike_decay=0.99)
    step = state_lib.make_train_step(SyntheticTask(None), graphdef, {}, guard, schedule,
                                     grad_accum=grad_accum, use_dropout=False)
    state = state_lib.new_state(params, guard, 0)
    new_state, metrics = jax.jit(step)(state, nnx.State({}), {}, batch, 0)
    return new_state, metrics


def test_accumulation_equals_one_big_batch():
    rows = packed_rows(8, 32, 200, seed=3)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    # Uneven target counts per micro-batch: a per-micro-batch mean would weigh them wrongly.
    batch["loss_mask"][:4, 10:] = 0.0
    big, m1 = one_update(1, batch)
    accumulated, m4 = one_update(4, batch)
    np.testing.assert_allclose(m1["loss"], m4["loss"], rtol=1e-6)
    np.testing.assert_allclose(m1["grad_norm"], m4["grad_norm"], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(big["params"]), jax.tree.leaves(accumulated["params"]),
                    strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name", ["cosine", "linear", "wsd", "constant"])
def test_schedules_warm_up_then_follow_their_shape(name):
    section = optim_section()
    section.schedule, section.lr, section.warmup_steps = name, 1.0, 10
    lr = optim.schedule(section, 100)
    assert float(lr(0)) == 0.0 and abs(float(lr(10)) - 1.0) < 1e-6
    end = float(lr(100))
    if name == "constant":
        assert end == 1.0
    else:
        assert abs(end - section.min_lr_ratio) < 1e-6
    if name == "wsd":
        assert float(lr(70)) == 1.0 and float(lr(90)) < 1.0  # stable, then the decay tail


def test_decay_mask_skips_norms_biases_and_embeddings():
    params = nnx.state(Transformer(ModelConfig(**{**CFG.__dict__, "family": "gpt2",
                                                  "n_kv_heads": 4}), nnx.Rngs(0)))
    mask = dict(nnx.to_flat_state(optim.decay_mask(params)))
    flat = {tuple(map(str, k)): v for k, v in mask.items()}
    decayed = {"/".join(k) for k, v in flat.items() if bool(jax.tree.leaves(v)[0])}
    assert "layers/attn/q_proj/kernel" in decayed
    assert not any(part in ("bias", "scale", "embed") for k in decayed for part in k.split("/"))


def test_bad_optimizer_settings_are_clear_errors():
    section = optim_section()
    section.name = "adamax"
    with pytest.raises(optim.OptimConfigError, match="optim.name"):
        optim.make_optimizer(section, 10)
    section = optim_section()
    section.schedule = "exp"
    with pytest.raises(optim.OptimConfigError, match="optim.schedule"):
        optim.make_optimizer(section, 10)
    assert jnp.isfinite(optim.schedule(optim_section(), 10)(5))
