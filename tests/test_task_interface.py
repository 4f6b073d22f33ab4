"""Each point of the Task interface, through the real loop, with the tasks of interface_tasks."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from interface_tasks import (
    AnswerTask,
    HeadTask,
    MultiUpdateTask,
    ReferenceTask,
    StatefulTask,
)
from synthetic_task import SyntheticTask, packed_rows

from llm.checkpoint import CheckpointError
from llm.config import load_config
from llm.loading import build_model, load_model
from llm.train.loop import train
from llm.train.state import prepare_rng

BASE = ["total_steps=6", "batch_size=8", "seq_len=32", "log.every_steps=1",
        "eval.every_steps=0", "optim.warmup_steps=0", "optim.lr=3e-3",
        "checkpoint.async_save=false"]


def config_for(workdir, *extra, spec="configs/pretrain.py:model=tiny"):
    return load_config(spec, [f"workdir={workdir}", *BASE, *extra])


def records(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A pretrained tiny model for init_from."""
    workdir = tmp_path_factory.mktemp("base")
    config = config_for(workdir, "total_steps=3")
    train(config, SyntheticTask(config))
    return workdir


def param_bytes(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def assert_reference_frozen(task, rows, learns=True):
    """The reference's loss inside every update equals what `prepare` computed from it on
    the same batch before the update, while the policy moves away from it."""
    assert len(rows) == len(task.prepare_ref_nll)
    for row, before in zip(rows, task.prepare_ref_nll, strict=True):
        assert row["ref_nll"] == pytest.approx(before, rel=1e-5)
    assert rows[0]["nll"] == pytest.approx(rows[0]["ref_nll"], rel=1e-5)  # starts as it
    if learns:
        assert rows[-1]["nll"] < rows[-1]["ref_nll"] - 0.01
    else:  # it has moved, whichever way
        assert abs(rows[-1]["nll"] - rows[-1]["ref_nll"]) > 1e-4


def test_reference_under_full_finetuning_is_a_frozen_copy(base_dir, tmp_path):
    config = config_for(tmp_path, f"init_from={base_dir}")
    task = ReferenceTask(config)
    train(config, task)
    assert_reference_frozen(task, records(tmp_path))
    # Full fine-tuning holds the starting weights twice: the policy and its reference.
    assert task.held_bytes[0] == 2 * task.policy_bytes[0]


def test_reference_under_lora_is_the_base_with_adapters_off(base_dir, tmp_path):
    config = config_for(tmp_path / "lora", f"init_from={base_dir}", "optim.lr=1e-2",
                        spec="configs/sft.py:model=tiny,lora")
    task = ReferenceTask(config)
    train(config, task)
    assert_reference_frozen(task, records(tmp_path / "lora"))
    # Adapters off is the base itself: the same first-batch loss as a full copy of the base.
    config = config_for(tmp_path / "full", f"init_from={base_dir}", "total_steps=1")
    full = ReferenceTask(config)
    train(config, full)
    assert task.prepare_ref_nll[0] == pytest.approx(full.prepare_ref_nll[0], rel=1e-6)
    # One copy of the base: the reference adds only zeroed adapters to what is held.
    base_bytes = param_bytes(load_model(str(base_dir)).params)
    assert task.trainable_bytes[0] < base_bytes / 4
    assert task.held_bytes[0] == task.policy_bytes[0] + task.trainable_bytes[0]
    assert task.held_bytes[0] < 1.5 * base_bytes


def test_reference_under_prefix_tuning_is_the_base(base_dir, tmp_path):
    config = config_for(tmp_path, f"init_from={base_dir}", "optim.lr=3e-2",
                        spec="configs/sft.py:model=tiny,prefix")
    task = ReferenceTask(config)
    train(config, task)
    # Prefixes enter through a zero-initialised tanh gate: in 6 steps the policy moves, but
    # does not yet beat the base.
    assert_reference_frozen(task, records(tmp_path), learns=False)
    assert task.held_bytes[0] == task.policy_bytes[0] + task.trainable_bytes[0]


def test_a_side_model_loaded_from_a_checkpoint(base_dir, tmp_path):
    from llm.train.task import SideModel

    class LoadedReference(ReferenceTask):
        def side_models(self):  # e.g. a reward model of another run, here the base itself
            return {"reference": SideModel(init_from=str(base_dir))}

    config = config_for(tmp_path)  # the policy starts from random weights, not the base
    task = LoadedReference(config)
    train(config, task)
    rows = records(tmp_path)
    for row, before in zip(rows, task.prepare_ref_nll, strict=True):
        assert row["ref_nll"] == pytest.approx(before, rel=1e-5)
    assert abs(rows[0]["nll"] - rows[0]["ref_nll"]) > 1e-3  # two different models
    # ...and the side model is the checkpoint's weights: the base's loss on the first batch.
    from flax import nnx
    from interface_tasks import lm_nll

    first = next(task.datasets(config, None, tmp_path)[0].make_iterator())
    base = load_model(str(base_dir))
    loss_sum, weight = lm_nll(nnx.merge(base.graphdef, base.params), first)
    assert task.prepare_ref_nll[0] == pytest.approx(float(loss_sum / weight), rel=1e-5)


def test_fresh_head_on_a_base_without_it(base_dir, tmp_path):
    from flax import nnx

    from llm import sharding

    config = config_for(tmp_path, f"init_from={base_dir}")
    task = HeadTask(config, head_lr_multiplier=0.0)
    train(config, task)
    base = load_model(str(base_dir))
    # What the loop starts from: the base's weights loaded, the head freshly initialised.
    start = nnx.state(build_model(base.model_cfg, config.peft,
                                  sharding.make_mesh({"data": -1}), seed=config.seed,
                                  init_from=str(base_dir), build=task.build,
                                  fresh=task.fresh))
    np.testing.assert_array_equal(np.asarray(start.embed[...]),
                                  np.asarray(base.params.embed[...]))
    assert np.abs(np.asarray(start.score_head.kernel[...])).max() > 0
    trained = load_model(str(tmp_path), build=task.build).params
    # The head's optimiser group has an lr multiplier of 0: it never moved...
    np.testing.assert_array_equal(np.asarray(trained.score_head.kernel[...]),
                                  np.asarray(start.score_head.kernel[...]))
    # ...while the base weights trained in the default group.
    assert not np.array_equal(np.asarray(trained.embed[...]), np.asarray(start.embed[...]))


def test_a_head_not_declared_fresh_is_refused(base_dir):
    class Undeclared(HeadTask):
        fresh = ()

    config = config_for(base_dir / "unused")
    task = Undeclared(config)
    from llm import sharding

    loaded = load_model(str(base_dir))
    with pytest.raises(CheckpointError, match="score_head"):
        build_model(loaded.model_cfg, config.peft, sharding.make_mesh({"data": -1}),
                    init_from=str(base_dir), build=task.build)


@pytest.mark.parametrize("task_class", [MultiUpdateTask, StatefulTask])
def test_resume_mid_run_is_bit_for_bit(task_class, tmp_path):
    extra = ["total_steps=12", "checkpoint.every_steps=3", "checkpoint.keep=4",
             "batch_size=16"]
    full = tmp_path / "full"
    config = config_for(full, *extra)
    full_task = task_class(config)
    train(config, full_task)
    resumed = tmp_path / "resumed"
    shutil.copytree(full, resumed)
    for step in (9, 12):  # as if the run had died after checkpoint 6
        shutil.rmtree(resumed / "checkpoints" / str(step))
    config = config_for(resumed, *extra)
    resumed_task = task_class(config)
    train(config, resumed_task)
    a, b = records(full), records(resumed)
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in b] == [r["loss"] for r in a]
    for x, y in zip(jax.tree.leaves(load_model(str(full)).params),
                    jax.tree.leaves(load_model(str(resumed)).params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert resumed_task.state_dict() == full_task.state_dict()
    loop = json.loads((resumed / "checkpoints" / "6" / "loop" / "metadata").read_text())
    if task_class is MultiUpdateTask:
        # Step 6 is the second update of the second batch: its batch and place were saved.
        assert loop["prepared"]["index"] == 2
        assert (resumed / "checkpoints" / "6" / "prepared").is_dir()
        # Four updates per batch, each on half its rows, once per epoch.
        assert {r["tokens"] for r in a} == {8 * 32}
        assert [r["batch_hash"] for r in a[:4]] == [a[0]["batch_hash"]] * 4
    else:
        assert loop["task"]["seen"] == 6  # every step up to the checkpoint observed
        assert full_task.state["seen"] == 12


def test_prepare_reads_string_fields(tmp_path):
    config = config_for(tmp_path, "total_steps=4")
    train(config, AnswerTask(config))
    lengths = [1 + n % 3 for n in range(32)]
    expected = [np.mean(lengths[8 * k: 8 * k + 8]) for k in range(4)]
    assert [r["answer_len"] for r in records(tmp_path)] == pytest.approx(expected)


def test_prepare_rng_is_its_own_stream():
    rng = jax.random.PRNGKey(0)
    a, b = prepare_rng(rng, 3), prepare_rng(rng, 4)
    train_key = jax.random.fold_in(rng, 3)
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(b))
    assert not np.array_equal(jax.random.key_data(a), jax.random.key_data(train_key))
    np.testing.assert_array_equal(jax.random.key_data(a),
                                  jax.random.key_data(prepare_rng(rng, 3)))


def test_resolved_values_go_to_their_own_section(tmp_path):
    class SmallerVocab(SyntheticTask):
        def datasets(self, config, mesh, workdir):
            train_data, eval_data = super().datasets(config, mesh, workdir)
            train_data.vocab_size = 640  # as a prepared dataset's tokenizer would say
            return train_data, eval_data

    config = config_for(tmp_path, "total_steps=1", "num_epochs=1")
    train(config, SmallerVocab(config))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 512 and saved["total_steps"] == 1  # as given
    assert saved["resolved"]["model"]["vocab_size"] == 640
    assert saved["resolved"]["total_steps"] == 64 // 8  # one epoch of 8-row batches
    assert load_model(str(tmp_path)).model_cfg.vocab_size == 640


def test_sft_honours_z_loss():
    from flax import nnx

    from llm import losses
    from llm.model import Transformer
    from llm.train.checks import model_config
    from llm.train.sft import SftTask

    config = load_config("configs/sft.py:model=tiny", ["train.z_loss=0.01"])
    model = Transformer(model_config(config), nnx.Rngs(0))
    rows = packed_rows(4, 16, 512, seed=0)
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    with_z, _ = SftTask(config).loss(model, {}, batch, None)
    logits, _ = model(batch["tokens"], batch["positions"], batch["segment_ids"])
    plain, _ = losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"])
    expected, _ = losses.masked_cross_entropy(logits, batch["targets"], batch["loss_mask"],
                                              z_loss=0.01)
    assert float(with_z) == pytest.approx(float(expected), rel=1e-6)
    assert float(with_z) > float(plain)
