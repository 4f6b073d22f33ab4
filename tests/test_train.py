"""The loop: learning, compile-once, spike skipping, logs, early stopping, config errors."""

import json
import subprocess
import sys

import numpy as np
import pytest
from synthetic_task import SyntheticTask

from llm.config import ConfigError, load_config
from llm.train.loop import train


def config_for(workdir, *extra):
    return load_config("configs/pretrain.py:model=tiny", [
        f"workdir={workdir}", "total_steps=40", "batch_size=8", "seq_len=32",
        "checkpoint.every_steps=20", "eval.every_steps=20", "log.every_steps=1",
        "optim.lr=3e-3", "optim.warmup_steps=5", "mesh.shape={'data': 8}", *extra])


class CountingTask(SyntheticTask):
    traces = 0

    def loss(self, model, side, batch, rng):
        CountingTask.traces += 1  # runs once per trace, not per step
        return super().loss(model, side, batch, rng)


def test_loss_drops_and_step_compiles_once(tmp_path):
    config = config_for(tmp_path, "optim.lr=1e-2", "total_steps=60")
    CountingTask.traces = 0
    train(config, CountingTask(config))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert np.mean(losses[-5:]) < 0.5 * losses[0]
    # One trace for the train step's shapes + one eval_shape of the sums + one eval step.
    assert CountingTask.traces <= 3
    for key in ("tokens_per_s", "mfu", "lr", "grad_norm", "batch_hash", "perplexity"):
        assert key in rows[0]
    assert any("eval_loss" in r for r in rows)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["total_steps"] == 60 and saved["model"]["d_model"] == 64


def test_rerunning_a_finished_run_trains_nothing_and_returns_its_evaluation(tmp_path):
    config = config_for(tmp_path, "total_steps=20")
    first = train(config, SyntheticTask(config))
    log = (tmp_path / "metrics.jsonl").read_text()
    config = config_for(tmp_path, "total_steps=20")
    again = train(config, SyntheticTask(config))
    assert again["step"] == 20
    np.testing.assert_allclose(again["eval_loss"], first["eval_loss"], rtol=1e-6)
    assert (tmp_path / "metrics.jsonl").read_text() == log  # nothing logged twice


def test_spikes_are_skipped_on_device_and_counted(tmp_path):
    config = config_for(tmp_path, "train.skip_spikes=true", "train.spike_warmup=3",
                        "train.spike_sigma=0.0", "total_steps=12", "eval.every_steps=0",
                        "optim.lr=0.0", "optim.warmup_steps=0")
    result = train(config, SyntheticTask(config))
    # lr 0 and sigma 0: the loss only varies by batch, so after the warm-up every batch
    # above the running mean counts as a spike and is skipped, and the others are not.
    assert result["skipped_steps"] >= 1 and result["skipped_steps"] <= 8


def test_resume_with_a_changed_config_names_the_keys(tmp_path):
    config = config_for(tmp_path, "total_steps=4", "eval.every_steps=0")
    train(config, SyntheticTask(config))
    changed = config_for(tmp_path, "total_steps=6", "eval.every_steps=0", "optim.lr=1e-2")
    with pytest.raises(RuntimeError, match="optim.lr"):
        train(changed, SyntheticTask(changed))


def test_resume_truncates_logs_to_the_checkpoint(tmp_path):
    config = config_for(tmp_path, "total_steps=6", "checkpoint.every_steps=4",
                        "eval.every_steps=0")
    train(config, SyntheticTask(config))
    # Pretend the run died after step 6 but its last checkpoint is 4: drop step 6's.
    import shutil

    shutil.rmtree(tmp_path / "checkpoints" / "6")
    train(config, SyntheticTask(config))
    steps = [json.loads(x)["step"] for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]
    from tensorboardX.proto import event_pb2

    from llm.metrics import _read_records

    events = [event_pb2.Event.FromString(r) for f in (tmp_path / "tb").iterdir()
              for r in _read_records(f)]
    loss_steps = sorted(e.step for e in events if e.HasField("summary")
                        and e.summary.value[0].tag == "loss")
    assert loss_steps == [1, 2, 3, 4, 5, 6]


def test_early_stopping_with_patience(tmp_path):
    config = config_for(tmp_path, "eval.every_steps=1", "eval.patience=2", "optim.lr=0.0",
                        "optim.warmup_steps=0", "total_steps=40")
    result = train(config, SyntheticTask(config))
    assert result["step"] == 3  # lr 0: no improvement after the first eval


def test_wandb_offline_logging(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = config_for(tmp_path, "total_steps=2", "eval.every_steps=0", "log.wandb=true",
                        "log.wandb_mode=offline")
    train(config, SyntheticTask(config))
    assert list((tmp_path / "wandb").glob("offline-run-*"))


@pytest.mark.parametrize("override,message", [
    ("optim.lrr=1e-3", "unknown config key; did you mean optim.lr"),
    ("total_steps=ten", "expected an integer"),
    ("model.size=huge", "unknown model size"),
])
def test_bad_overrides_are_one_clear_error(override, message):
    with pytest.raises((ConfigError, ValueError), match=message):
        load_config("configs/pretrain.py", [override])


def test_cli_reports_missing_data_path_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config=configs/pretrain.py:model=tiny",
         f"--config.workdir={tmp_path}", f"--config.data.path={tmp_path}/nope"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "data.path" in proc.stderr and "no such file" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_unknown_key_lists_close_matches(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/train.py", "--config=configs/pretrain.py",
         "--config.optim.warmup=5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "optim.warmup_steps" in proc.stderr


def test_batch_must_divide_the_mesh(tmp_path):
    config = config_for(tmp_path, "batch_size=6")
    with pytest.raises(ConfigError, match="batch_size=6"):
        train(config, SyntheticTask(config))


def test_attention_kernel_the_backend_cannot_run_is_one_clear_error(tmp_path):
    config = config_for(tmp_path, "model.attention=cudnn")
    with pytest.raises(ValueError, match="model.attention='cudnn' needs a GPU"):
        train(config, SyntheticTask(config))


def test_init_from_a_different_layer_layout_is_one_clear_error(tmp_path):
    base = config_for(tmp_path / "base", "total_steps=2", "eval.every_steps=0",
                      "model.scan_layers=false")
    train(base, SyntheticTask(base))
    config = config_for(tmp_path / "run", "total_steps=2", "eval.every_steps=0",
                        f"init_from={tmp_path / 'base'}")
    with pytest.raises(ValueError, match="not in the checkpoint.*scan_layers"):
        train(config, SyntheticTask(config))


@pytest.mark.parametrize("override", ["checkpoint.every_steps=0", "log.every_steps=0"])
def test_zero_intervals_are_one_clear_error(tmp_path, override):
    config = config_for(tmp_path, override)
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        train(config, SyntheticTask(config))
