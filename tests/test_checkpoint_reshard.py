"""A checkpoint's data position written by another process count: moved or refused.

The step is written by this one process, then its data-iterator file is replaced by the
files two processes would have written (tests/test_multihost.py runs the real thing).
"""

import json

import grain
import jax.numpy as jnp
import numpy as np
import pytest

from llm.checkpoint import Checkpointer, CheckpointError, ReshardError
from llm.data import checksums


def _iterator():
    return iter(grain.MapDataset.source(list(range(100))).batch(2))


@pytest.fixture
def written_by_two(tmp_path):
    """A step whose data position says 3 batches read, as if two processes wrote it."""
    checkpointer = Checkpointer(tmp_path, async_save=False)
    iterator = _iterator()
    for _ in range(3):
        next(iterator)
    checkpointer.save(3, {"w": jnp.arange(4.0)}, iterator, {"tokens_seen": 0}, {"task": "t"})
    checkpointer.wait()
    folder = tmp_path / "3" / "data_iterator"
    (folder / "process_0-of-1.json").unlink()
    for index in range(2):
        (folder / f"process_{index}-of-2.json").write_text(json.dumps({"next_index": 3}))
    checksums.write_manifest(tmp_path / "3")  # the step is sound, as two processes left it
    return checkpointer


def test_a_reshardable_stream_resumes_at_the_global_position(written_by_two, capsys):
    iterator, template = _iterator(), {"w": jnp.zeros(4)}
    state, _, _ = written_by_two.restore(3, template, {"w": template["w"].sharding}, iterator,
                                         reshardable=True)
    np.testing.assert_array_equal(next(iterator), [6, 7])
    np.testing.assert_array_equal(state["w"], np.arange(4.0))
    assert ("was written by 2 processes and this run has 1: resuming the data stream at "
            "its global position {'next_index': 3}") in capsys.readouterr().out
    written_by_two.close()


def test_a_stream_that_cannot_reshard_is_refused_not_set_aside(written_by_two):
    with pytest.raises(ReshardError, match=r"checkpoints?.*3 was written by 2 processes and "
                       r"this run has 1; this task's data iterator keeps a position per "
                       r"process, which cannot be moved to 1. Restart with 2 processes"):
        template = {"w": jnp.zeros(4)}
        written_by_two.restore_latest(template, {"w": template["w"].sharding}, _iterator())
    assert written_by_two.steps() == [3]  # the step is sound: kept where it is
    written_by_two.close()


def test_positions_that_differ_between_processes_are_refused(written_by_two):
    folder = written_by_two.directory / "3" / "data_iterator"
    (folder / "process_1-of-2.json").write_text(json.dumps({"next_index": 4}))
    with pytest.raises(ReshardError, match=r"different data positions \(process 0: "
                       r"\{'next_index': 3\}, process 1: \{'next_index': 4\}\)"):
        written_by_two.resharded_iterator_state(3, reshardable=True)
    written_by_two.close()


def test_a_missing_process_file_is_a_damaged_step(written_by_two):
    (written_by_two.directory / "3" / "data_iterator" / "process_1-of-2.json").unlink()
    with pytest.raises(CheckpointError, match="process_1-of-2.json: missing"):
        written_by_two.resharded_iterator_state(3, reshardable=True)
    written_by_two.close()
