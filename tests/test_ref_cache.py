"""`dpo.precompute_ref_log_probs`: reference log-probs computed once, stored atomically in the
workdir under a key of (data, reference, seq_len, truncation), looked up by record index;
training with them equals training with the reference in the step, holds no reference, and
a run killed with SIGKILL resumes bit for bit."""

from __future__ import annotations

import json
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx
from test_dpo import COMMON, assert_kill_and_rerun_equals_uninterrupted, records, sft_and_pairs

from llm import sharding
from llm.config import load_config
from llm.data import loaders
from llm.loading import load_model
from llm.train import get_task, ref_cache
from llm.train.dpo import DpoTask, pair_logps
from llm.train.loop import train

RUN = [c for c in COMMON if not c.startswith(("eval.every_steps", "data.split"))]


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """test_dpo.py's start with a fifth of the pairs held out (the eval path looks up the
    validation split's table)."""
    return sft_and_pairs(tmp_path_factory.mktemp("refcache"), validation=0.2)


def dpo_config(workdir, base, pairs, *extra, variant=""):
    spec = "configs/dpo.py:model=tiny" + (f",{variant}" if variant else "")
    return load_config(spec, [f"workdir={workdir}", f"init_from={base}", f"data.path={pairs}",
                              "total_steps=4", "checkpoint.every_steps=4", "eval.every_steps=2",
                              "optim.lr=1e-2", *RUN, *extra])


class Recording(DpoTask):
    """DPO that records what each prepared batch sees: side models and bytes held."""

    def __init__(self, config):
        super().__init__(config)
        self.seen: list[dict] = []

    def prepare(self, models, host_batch, rng):
        policy = sum(x.size * x.dtype.itemsize
                     for x in jax.tree.leaves((models.params, models.frozen)))
        self.seen.append({"side": dict(models.side), "held": models.held_bytes(),
                          "policy": policy})
        return super().prepare(models, host_batch, rng)


def eval_records(workdir):
    lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "eval_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["", "lora"])
def test_precomputed_reference_trains_as_the_reference_in_the_step(start, tmp_path, variant):
    base, pairs = start
    train(dpo_config(tmp_path / "in_step", base, pairs, variant=variant))
    task = Recording(dpo_config(tmp_path / "pre", base, pairs,
                                "dpo.precompute_ref_log_probs=true", variant=variant))
    train(task.config, task)
    a, b = records(tmp_path / "in_step"), records(tmp_path / "pre")
    assert len(a) == len(b) == 4 and b[-1]["loss"] != b[0]["loss"]
    for key in ("loss", "rewards/margins", "rewards/chosen", "logps/rejected"):
        np.testing.assert_allclose([r[key] for r in b], [r[key] for r in a], rtol=1e-5,
                                   atol=1e-6, err_msg=key)
    np.testing.assert_allclose([r["eval_loss"] for r in eval_records(tmp_path / "pre")],
                               [r["eval_loss"] for r in eval_records(tmp_path / "in_step")],
                               rtol=1e-5)
    # No reference is held: no side model, only the policy's own arrays.
    assert task.seen and all(not seen["side"] and seen["held"] == seen["policy"]
                             for seen in task.seen)
    loaded = load_model(str(base))
    # The stored table is the un-adapted base's log-probs of each pair, by record index.
    stored = list((tmp_path / "pre" / ref_cache.CACHE_DIR).iterdir())
    assert len(stored) == 1 and stored[0].suffix == ".npz"
    with np.load(stored[0]) as tables:
        table = tables["train"]
    chosen, rejected = loaders.preference_records(pairs, "train")
    source = loaders.pair_source(chosen, rejected, 48, loaders.read_meta(pairs)["pad_id"],
                                 "skip")
    rows = [source[i] for i in range(5)]
    batch = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    expected_2P, _ = pair_logps(nnx.merge(loaded.graphdef, loaded.params), batch)
    got = table[batch["record_index"]]
    np.testing.assert_allclose(got[:, 0], np.asarray(expected_2P)[:5], rtol=1e-5)
    np.testing.assert_allclose(got[:, 1], np.asarray(expected_2P)[5:], rtol=1e-5)


@pytest.mark.slow
def test_a_rerun_reads_the_table_and_any_change_of_its_inputs_makes_another(
        start, tmp_path, monkeypatch):
    base, pairs = start
    scored = []
    score_split = ref_cache.score_split
    monkeypatch.setattr(ref_cache, "score_split",
                        lambda *a, **k: scored.append(a[-1]) or score_split(*a, **k))
    workdir = tmp_path / "run"
    train(dpo_config(workdir, base, pairs, "dpo.precompute_ref_log_probs=true"))
    assert scored == ["train", "validation"]
    # Resumed with more steps: the table is read, not recomputed.
    train(dpo_config(workdir, base, pairs, "dpo.precompute_ref_log_probs=true",
                     "total_steps=6"))
    assert scored == ["train", "validation"]
    assert [r["step"] for r in records(workdir)] == list(range(1, 7))
    # The key follows the data bytes, the reference's weights, seq_len and truncation.
    key = ref_cache.cache_key(pairs, "ref", 48, "skip")
    assert key == ref_cache.cache_key(pairs, "ref", 48, "skip")
    assert len({key, ref_cache.cache_key(pairs, "other", 48, "skip"),
                ref_cache.cache_key(pairs, "ref", 64, "skip"),
                ref_cache.cache_key(pairs, "ref", 48, "keep_end")}) == 4
    import shutil

    changed = tmp_path / "changed"
    shutil.copytree(pairs, changed)
    record = sorted((changed / "records" / "train").glob("rejected-*.tokens.bin"))[0]
    data = bytearray(record.read_bytes())
    data[0] ^= 1
    record.write_bytes(bytes(data))
    assert ref_cache.cache_key(changed, "ref", 48, "skip") != key


@pytest.mark.slow
def test_the_table_is_written_atomically(start, tmp_path, monkeypatch):
    base, pairs = start
    mesh = sharding.make_mesh({"data": -1})
    loaded = load_model(str(base), mesh)
    reference = nnx.merge(loaded.graphdef, loaded.params)
    args = (reference, pair_logps, "ref", pairs, tmp_path, mesh, 8, 48, "skip", 0)

    def half_written(file, **tables):
        file.write(b"PK\x03\x04 partial")
        raise OSError("disk full")

    monkeypatch.setattr(ref_cache.np, "savez", half_written)
    with pytest.raises(OSError, match="disk full"):
        ref_cache.load_or_compute(*args)
    assert not list((tmp_path / ref_cache.CACHE_DIR).glob("*.npz"))  # only the .tmp
    monkeypatch.undo()
    tables = ref_cache.load_or_compute(*args)
    again = ref_cache.load_or_compute(*args)
    np.testing.assert_array_equal(tables["train"], again["train"])
    assert np.isfinite(tables["train"]).all() and tables["train"].shape[1] == 2
    # A damaged table is computed again, not a traceback.
    (stored,) = (tmp_path / ref_cache.CACHE_DIR).glob("*.npz")
    stored.write_bytes(stored.read_bytes()[:100])
    np.testing.assert_array_equal(ref_cache.load_or_compute(*args)["train"], tables["train"])
    with np.load(stored) as rewritten:
        np.testing.assert_array_equal(rewritten["train"], tables["train"])


@pytest.mark.slow
def test_sigkill_then_rerun_with_precomputed_reference_equals_uninterrupted(start, tmp_path):
    base, pairs = start
    assert_kill_and_rerun_equals_uninterrupted(
        tmp_path, base, pairs, "--config.dpo.precompute_ref_log_probs=true",
        keys=("loss", "batch_hash", "rewards/margins", "logps/chosen"))


@pytest.mark.parametrize("loss_type, message", [
    ("simpo", "uses no reference model"), ("orpo", "uses no reference model"),
    ("kto", "known only at the step")])
def test_precompute_is_refused_where_it_cannot_apply(loss_type, message):
    config = load_config("configs/dpo.py:model=tiny", [f"dpo.loss_type={loss_type}",
                                                       "dpo.precompute_ref_log_probs=true"])
    with pytest.raises(ValueError, match=f"dpo.precompute_ref_log_probs.*{message}"):
        get_task("dpo")(config).check()
