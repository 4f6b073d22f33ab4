"""Length buckets: a preference batch is cut to its longest row's bucket, never shorter than
a row (or, for KTO, a mismatched KL row) needs, and the losses are those at seq_len."""

from __future__ import annotations

import numpy as np
import pytest
from flax import nnx
from label_helpers import tiny_model

from llm.config import load_config
from llm.data import buckets, loaders
from llm.train import get_task
from llm.train.kto import row_logps

SEQ = 128


@pytest.mark.parametrize("longest, multiple, expected", [
    (0, 0, 16), (5, 0, 16), (16, 0, 16), (17, 0, 24), (24, 0, 24), (25, 0, 32),
    (33, 0, 48), (49, 0, 64), (97, 0, 128), (128, 0, 128),
    (1, 24, 24), (25, 24, 48), (121, 24, 128), (7, SEQ, SEQ)])
def test_bucket_length(longest, multiple, expected):
    assert buckets.bucket_length(longest, SEQ, multiple) == expected


@pytest.mark.parametrize("bad", [-1, 1.5, "8", True])
def test_a_bad_multiple_names_the_key(bad):
    with pytest.raises(ValueError, match="dpo.pad_to_multiple_of"):
        buckets.check_multiple(bad, "dpo.pad_to_multiple_of")


def row(prompt: int, completion: int, seed: int) -> dict:
    """A packed row of `prompt` + `completion` random tokens, loss on the completion."""
    ids = np.random.default_rng(seed).integers(3, 250, prompt + completion)
    mask = np.r_[np.zeros(prompt), np.ones(completion)].astype(np.float32)
    return loaders.pack_row([(ids, mask)], SEQ, 0)


def stack(rows: list[dict], prefix: str = "") -> dict:
    return {f"{prefix}{k}": np.stack([r[k] for r in rows]) for k in rows[0]}


def task_and_models(loss_type: str, *extra: str):
    config = load_config("configs/dpo.py:model=tiny", [f"seq_len={SEQ}",
                                                       f"dpo.loss_type={loss_type}", *extra])
    graphdef, params = tiny_model(0)
    ref_graphdef, ref_params = tiny_model(1)  # a reference apart, so the ratios are not 0
    return (get_task("dpo")(config), nnx.merge(graphdef, params),
            {"reference": nnx.merge(ref_graphdef, ref_params)})


def test_pairs_are_cut_to_their_bucket_and_the_loss_is_unchanged():
    task, policy, side = task_and_models("sigmoid,ipo")
    lengths = [(5, 9), (11, 3), (4, 14)]  # longest row 18 tokens -> bucket 24
    batch = {**stack([row(p, c, i) for i, (p, c) in enumerate(lengths)], "chosen_"),
             **stack([row(p, c + 2, 9 + i) for i, (p, c) in enumerate(lengths)], "rejected_"),
             "margin": np.zeros(3, np.float32), "record_index": np.arange(3, dtype=np.int32)}
    trimmed = task.prepare(None, batch, None)
    assert trimmed["chosen_tokens"].shape == trimmed["rejected_loss_mask"].shape == (3, 24)
    np.testing.assert_array_equal(trimmed["record_index"], batch["record_index"])
    full_loss, full_metrics = task.loss(policy, side, batch, None)
    cut_loss, cut_metrics = task.loss(policy, side, trimmed, None)
    assert float(full_loss) != 0
    np.testing.assert_allclose(float(cut_loss), float(full_loss), rtol=1e-6)
    # Margins are differences of log-prob sums of ~-70 computed at another matmul width:
    # fp32 rounding of those sums (~1e-5 absolute) is the floor.
    for key in ("rewards/margins", "logps/chosen", "logps/rejected"):
        np.testing.assert_allclose(float(cut_metrics[key]), float(full_metrics[key]),
                                   rtol=1e-6, atol=1e-5)


def test_seq_len_as_the_multiple_keeps_every_column():
    task, _, _ = task_and_models("sigmoid", f"dpo.pad_to_multiple_of={SEQ}")
    batch = {**stack([row(3, 3, 0)], "chosen_"), **stack([row(3, 4, 1)], "rejected_")}
    assert task.prepare(None, batch, None)["chosen_tokens"].shape == (1, SEQ)


def test_kto_keeps_the_columns_its_mismatched_rows_need():
    task, policy, side = task_and_models("kto", "batch_size=2")
    # Each row is 22 tokens, but row 0's prompt followed by row 1's completion is 40.
    rows = [row(20, 2, 0), row(2, 20, 1)]
    batch = {**stack(rows), "label": np.array([1, 0], np.int32),
             "prompt_lengths": np.array([20, 2], np.int32),
             "record_index": np.arange(2, dtype=np.int32)}
    trimmed = task.prepare(None, batch, None)
    assert trimmed["tokens"].shape == (2, 48)  # not 24, the rows' own bucket
    # The matched and mismatched rows' log-prob sums are those at seq_len to fp32 rounding;
    # the loss and KL, differences of such sums (~-200 here) through a sigmoid, follow them.
    for got, want in zip(row_logps(policy, trimmed), row_logps(policy, batch), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)
    full_loss, full_metrics = task.loss(policy, side, batch, None)
    cut_loss, cut_metrics = task.loss(policy, side, trimmed, None)
    np.testing.assert_allclose(float(cut_loss), float(full_loss), rtol=1e-5)
    np.testing.assert_allclose(float(cut_metrics["kl"]), float(full_metrics["kl"]),
                               rtol=1e-5, atol=1e-5)
    # Cutting at the rows' own bucket would have shortened the KL rows.
    naive = buckets.trim_batch(batch, SEQ, 0, longest=22)
    _, naive_metrics = task.loss(policy, side, naive, None)
    assert abs(float(naive_metrics["kl"]) - float(full_metrics["kl"])) > 1e-4
