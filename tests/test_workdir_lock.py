"""A workdir belongs to one run: a second run is refused, a dead run's lock is taken over,
a refused run leaves nothing behind, a dataset is no workdir, no metrics row is bare.
(The same with real runs and kill -9: tests/test_recovery.py.)"""

import json
import os
import subprocess
import sys

import pytest
from synthetic_task import SyntheticTask

from llm import metrics as metrics_lib
from llm.config import ConfigError, load_config
from llm.train import workdir as workdir_lib
from llm.train.loop import train
from llm.train.workdir import EXIT_UNFINISHED, TrainingError, WorkdirLock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(workdir, **holder):
    (workdir / "run-0.lock").write_text(json.dumps(holder))


def test_a_live_holder_on_this_host_is_refused_by_name(tmp_path):
    first = WorkdirLock(tmp_path, 0)
    first.acquire()
    with pytest.raises(TrainingError, match=f"another run is training.*pid {os.getpid()}"):
        WorkdirLock(tmp_path, 0).acquire()
    first.release()
    assert not (tmp_path / "run-0.lock").exists()
    WorkdirLock(tmp_path, 0).acquire()  # free again


def test_a_dead_holder_is_taken_over_with_a_note(tmp_path, capsys):
    host = WorkdirLock(tmp_path, 0).me["host"]
    _write_lock(tmp_path, host=host, pid=_dead_pid(), since="earlier")
    lock = WorkdirLock(tmp_path, 0)
    lock.acquire()
    assert "is gone; taking over" in capsys.readouterr().out
    assert json.loads((tmp_path / "run-0.lock").read_text())["pid"] == os.getpid()


def test_a_reused_pid_is_not_mistaken_for_the_holder(tmp_path, capsys):
    host = WorkdirLock(tmp_path, 0).me["host"]
    # our own pid, but a different start time: the holder was an earlier process
    _write_lock(tmp_path, host=host, pid=os.getpid(), start="1", since="earlier")
    WorkdirLock(tmp_path, 0).acquire()
    assert "taking over" in capsys.readouterr().out


def test_another_hosts_lock_needs_the_override(tmp_path, capsys):
    _write_lock(tmp_path, host="node-17", pid=1234, since="earlier")
    with pytest.raises(TrainingError, match="another host.*node-17.*take_over_lock=True"):
        WorkdirLock(tmp_path, 0).acquire()
    WorkdirLock(tmp_path, 0, take_over=True).acquire()
    assert "taking over the lock of pid 1234 on node-17" in capsys.readouterr().out


def _config(workdir, *extra):
    return load_config("configs/pretrain.py:model=tiny", [
        f"workdir={workdir}", "total_steps=4", "batch_size=8", "seq_len=32",
        "eval.every_steps=0", "mesh.shape={'data': 8}", *extra])


def test_a_refused_run_leaves_no_workdir(tmp_path):
    workdir = tmp_path / "new" / "run"
    config = _config(workdir, "batch_size=6")  # the mesh's 8 devices do not divide it
    with pytest.raises(ConfigError, match="batch_size=6"):
        train(config, SyntheticTask(config))
    assert not workdir.exists()


def test_a_prepared_dataset_is_not_a_workdir(tmp_path):
    (tmp_path / "meta.json").write_text("{}")
    (tmp_path / "tokenizer").mkdir()
    config = _config(tmp_path)
    with pytest.raises(ConfigError, match="is a prepared dataset"):
        train(config, SyntheticTask(config))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["meta.json", "tokenizer"]


def test_metrics_never_holds_a_row_without_metrics(tmp_path):
    writer = metrics_lib.MetricsWriter(tmp_path, 0)
    writer.write(3, {})  # e.g. an evaluation with nothing to report
    writer.write(4, {"loss": 1.0})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 4, "loss": 1.0}]


def test_exit_status_of_an_unfinished_run():
    assert EXIT_UNFINISHED == 75
    assert workdir_lib.exit_status({"unfinished": True}) == 75
    assert workdir_lib.exit_status({"unfinished": False}) == 0
