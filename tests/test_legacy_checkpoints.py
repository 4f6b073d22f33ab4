"""Checkpoints written before the training-layer change (tests/fixtures/legacy_pretrain, a
tiny pretraining run at commit cd3ebfe: model settings in `model`, `scalar_head` among them,
no `resolved` section) still load for init_from, sampling and export."""

import pathlib
import shutil

import jax
import numpy as np
import pytest
from synthetic_task import SyntheticTask

from llm.config import load_config
from llm.loading import load_model
from llm.sampling import decode
from llm.train.loop import train

LEGACY = pathlib.Path(__file__).parent / "fixtures" / "legacy_pretrain"
SMALL = ["model.vocab_size=128", "model.d_model=32", "model.d_ff=64", "model.head_dim=8",
         "model.n_heads=4", "model.n_kv_heads=2", "seq_len=16", "batch_size=8",
         "total_steps=2", "eval.every_steps=0", "checkpoint.async_save=false",
         "optim.warmup_steps=0"]


@pytest.fixture
def legacy(tmp_path):
    copy = tmp_path / "legacy"
    shutil.copytree(LEGACY, copy)
    return copy


def test_legacy_checkpoint_loads_with_its_weights(legacy):
    loaded = load_model(str(legacy))
    assert loaded.model_cfg.vocab_size == 128 and loaded.model_cfg.d_model == 32
    embed = np.asarray(loaded.params.embed[...])
    assert embed.shape == (128, 32) and np.isfinite(embed).all() and embed.std() > 0.01


def test_legacy_checkpoint_as_init_from(legacy, tmp_path):
    config = load_config("configs/pretrain.py:model=tiny",
                         [f"workdir={tmp_path / 'run'}", f"init_from={legacy}", *SMALL])
    result = train(config, SyntheticTask(config))
    assert result["step"] == 2 and np.isfinite(result["loss"])
    base, tuned = load_model(str(legacy)), load_model(str(tmp_path / "run"))
    moved = [not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(jax.tree.leaves(base.params), jax.tree.leaves(tuned.params), strict=True)]
    assert any(moved)


def test_legacy_checkpoint_samples(legacy):
    loaded = load_model(str(legacy))
    prompts_BP = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], np.int32)
    sp = decode.SamplingParams.create(2, temperature=0.0, max_new_tokens=6)
    out = decode.generate(loaded.graphdef, loaded.params, prompts_BP, np.array([4, 4]), sp,
                          max_len=16)
    assert list(out.lengths_B) == [6, 6]
    assert ((out.tokens_BN >= 0) & (out.tokens_BN < 128)).all()
    # Greedy decoding's first token is the full forward's argmax at the last prompt token.
    from flax import nnx

    logits_BTV, _ = nnx.merge(loaded.graphdef, loaded.params)(prompts_BP)
    np.testing.assert_array_equal(out.tokens_BN[:, 0], np.argmax(logits_BTV[:, -1], -1))


def test_legacy_checkpoint_exports_to_hf(legacy, tmp_path):
    pytest.importorskip("transformers")
    from llm.hf import convert as hf

    loaded = load_model(str(legacy))
    hf.export_hf(loaded.model_cfg, loaded.params, str(tmp_path / "hf"), dtype="float32")
    model_cfg, _, params, _ = hf.import_hf(str(tmp_path / "hf"))
    np.testing.assert_array_equal(np.asarray(params.embed[...])[:128],
                                  np.asarray(loaded.params.embed[...])[:128])
