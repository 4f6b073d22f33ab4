"""Sharded == unsharded, mesh construction, and resharding a checkpoint onto another mesh."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from synthetic_task import SyntheticTask, packed_rows

from llm import sharding
from llm.config import load_config
from llm.model import ModelConfig, Transformer
from llm.train.loop import train

CFG = ModelConfig(vocab_size=200, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2,
                  head_dim=24, d_ff=160, max_seq_len=64)


def loss_and_grads(mesh):
    graphdef, params = sharding.init_sharded(lambda: Transformer(CFG, nnx.Rngs(0)), mesh)
    rows = packed_rows(8, 32, 200, seed=0)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    task = SyntheticTask(None)

    @jax.jit
    def f(params, batch):
        def loss(p):
            total, sums = task.loss(nnx.merge(graphdef, p), {}, batch, None)
            return total / sums["weight"]
        return jax.value_and_grad(loss)(params)

    loss, grads = f(params, sharding.place_batch(batch, mesh))
    return float(loss), jax.tree.map(np.asarray, grads)


def test_eight_device_mesh_matches_one_device():
    one = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    eight = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    loss1, grads1 = loss_and_grads(one)
    loss8, grads8 = loss_and_grads(eight)
    assert abs(loss1 - loss8) < 1e-5
    for a, b in zip(jax.tree.leaves(grads1), jax.tree.leaves(grads8), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_weights_are_born_sharded_by_logical_axes():
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    _, params = sharding.init_sharded(lambda: Transformer(CFG, nnx.Rngs(0)), mesh)
    q = params["layers"]["attn"]["q_proj"]["kernel"][...]
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(q.addressable_shards) == 8 and q.addressable_shards[0].data.shape == (2, 32, 48)


def test_mesh_shape_resolution_and_errors():
    assert sharding.resolve_mesh_shape({"data": -1, "tensor": 2}, 8) == {
        "data": 4, "fsdp": 1, "tensor": 2}
    with pytest.raises(sharding.MeshConfigError, match="only one axis"):
        sharding.resolve_mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(sharding.MeshConfigError, match="needs 6 devices"):
        sharding.resolve_mesh_shape({"data": 3, "fsdp": 2}, 8)
    with pytest.raises(sharding.MeshConfigError, match="unknown axes"):
        sharding.resolve_mesh_shape({"pipeline": 2}, 8)


def _config(workdir, mesh, steps):
    return load_config("configs/pretrain.py:model=tiny", [
        f"workdir={workdir}", f"total_steps={steps}", "batch_size=8", "seq_len=32",
        "checkpoint.every_steps=4", "eval.every_steps=0", "log.every_steps=1",
        "checkpoint.async_save=false", f"mesh.shape={mesh}"])


def test_checkpoint_restores_onto_another_mesh(tmp_path):
    import shutil

    first = _config(tmp_path / "a", "{'data': 8}", 4)
    train(first, SyntheticTask(first))
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    same = _config(tmp_path / "a", "{'data': 8}", 6)
    train(same, SyntheticTask(same))
    other = _config(tmp_path / "b", "{'data': 2, 'fsdp': 2, 'tensor': 2}", 6)
    train(other, SyntheticTask(other))

    def losses(workdir):
        rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in rows if r["step"] > 4 and "loss" in r]

    np.testing.assert_allclose(losses(tmp_path / "a"), losses(tmp_path / "b"), rtol=1e-5)
    assert len(losses(tmp_path / "a")) == 2
