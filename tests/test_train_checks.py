"""What a run refuses, and when: keys before any data is read, workdirs that are not its
own, configs that differ from the run already in the workdir, stale tokenizers."""

import json
import shutil
import subprocess
import sys

import pytest
from synthetic_task import SyntheticTask
from test_train import config_for

from llm.config import ConfigError, load_config
from llm.train import workdir as loop
from llm.train.loop import train


@pytest.mark.parametrize("override, message", [
    ("seq_len=0", "seq_len=0: expected >= 1"),
    ("num_epochs=-1", "num_epochs=-1: expected >= 0"),
    ("seed=-1", "seed=-1: expected an integer in"),
    ("optim.grad_accum=0", "optim.grad_accum=0: expected >= 1"),
    ("optim.min_lr_ratio=10", "optim.min_lr_ratio=10.0: expected \\[0.0, 1.0\\]"),
    ("optim.b2=2.0", "optim.b2=2.0: expected \\[0.0, 1.0\\)"),
    ("optim.clip_norm=-1", "optim.clip_norm=-1.0: expected >= 0.0 \\(0 turns clipping off\\)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: expected >= 0.0"),
    ("eval.steps=0", "eval.steps=0: expected >= 1"),
    ("train.spike_decay=1.5", "train.spike_decay=1.5: expected in \\(0, 1\\)"),
    ("peft.method=lora", "init_from='': expected a base model for peft.method='lora'"),
    ("model.remat=sometimes", "remat"),
    ("mesh.rules.embed=fsdpp", "mesh.rules.embed='fsdpp': expected a mesh axis"),
])
def test_bad_keys_are_refused_before_any_data_is_read(tmp_path, override, message):
    class NoData(SyntheticTask):
        def datasets(self, *args):
            raise AssertionError("the data was read before the keys were checked")

    config = config_for(tmp_path, override)
    with pytest.raises(ValueError, match=message):
        train(config, NoData(config))


def test_wandb_mode_typo_is_refused(tmp_path):
    config = config_for(tmp_path, "log.wandb=true", "log.wandb_mode=ofline")
    with pytest.raises(ConfigError, match="log.wandb_mode='ofline': expected one of online"):
        train(config, SyntheticTask(config))


def test_a_model_folder_is_never_used_as_a_workdir(tmp_path):
    (tmp_path / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    config = config_for(tmp_path, "total_steps=2")
    with pytest.raises(ConfigError, match="not a training run's"):
        train(config, SyntheticTask(config))
    assert json.loads((tmp_path / "config.json").read_text()) == {
        "architectures": ["LlamaForCausalLM"]}
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="cannot create it"):
        config = config_for(tmp_path / "file" / "run")
        train(config, SyntheticTask(config))


def test_a_changed_config_is_refused_even_before_the_first_checkpoint(tmp_path):
    config = config_for(tmp_path, "total_steps=2", "eval.every_steps=0")
    train(config, SyntheticTask(config))
    shutil.rmtree(tmp_path / "checkpoints")  # as if killed before its first commit
    metrics = (tmp_path / "metrics.jsonl").read_text()
    changed = config_for(tmp_path, "total_steps=2", "eval.every_steps=0", "optim.lr=0.5")
    with pytest.raises(RuntimeError, match="different config; changed keys: optim.lr"):
        train(changed, SyntheticTask(changed))
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing truncated
    assert json.loads((tmp_path / "config.json").read_text())["optim"]["lr"] == 3e-3


def test_without_config_json_the_checkpoint_config_is_compared(tmp_path):
    config = config_for(tmp_path, "total_steps=2", "eval.every_steps=0")
    train(config, SyntheticTask(config))
    (tmp_path / "config.json").unlink()
    changed = config_for(tmp_path, "total_steps=4", "eval.every_steps=0", "model.n_layers=3")
    with pytest.raises(RuntimeError, match="changed keys: model.n_layers"):
        train(changed, SyntheticTask(changed))
    assert (tmp_path / "checkpoints" / "2").is_dir()  # not set aside as "corrupt"
    assert not list((tmp_path / "checkpoints").glob("corrupt_*"))


def test_a_stale_tokenizer_is_replaced_only_before_any_checkpoint(tmp_path):
    data_tok = tmp_path / "data_tok"
    data_tok.mkdir()
    (data_tok / "tokenizer.model").write_bytes(b"new")
    workdir = tmp_path / "run"
    (workdir / "tokenizer").mkdir(parents=True)
    (workdir / "tokenizer" / "tokenizer.model").write_bytes(b"left by a failed attempt")
    loop.copy_tokenizer(data_tok, workdir, has_checkpoints=False)
    assert (workdir / "tokenizer" / "tokenizer.model").read_bytes() == b"new"
    (data_tok / "tokenizer.model").write_bytes(b"another")
    with pytest.raises(RuntimeError, match="checkpoints were trained with it"):
        loop.copy_tokenizer(data_tok, workdir, has_checkpoints=True)
    assert (workdir / "tokenizer" / "tokenizer.model").read_bytes() == b"new"


def test_config_file_and_flag_mistakes_are_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="README.md: expected a Python config file"):
        load_config("README.md")
    broken = tmp_path / "broken.py"
    broken.write_text("raise KeyError('oops')\n")
    with pytest.raises(ConfigError, match="the file failed to load: KeyError"):
        load_config(str(broken))
    with pytest.raises(ValueError, match="choose one of"):
        load_config("configs/sft.py:lora,qlora")
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config=configs/pretrain.py",
                           "--cofig.total_steps=3"], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "error:" in proc.stderr and "cofig.total_steps" in proc.stderr


def test_model_keys_survive_a_later_model_size(tmp_path):
    config = load_config("configs/pretrain.py", ["model.n_layers=3", "model.size=tiny"])
    assert (config.model.size, config.model.n_layers) == ("tiny", 3)


@pytest.mark.parametrize("override, message", [
    ("sft.eval_file={tmp}/missing.jsonl", "sft.eval_file=.*missing.jsonl: No such file"),
    ("sft.eval_verifier=arith", "sft.eval_verifier='arith': expected one of"),
    ("sft.eval_max_new_tokens=0", "sft.eval_max_new_tokens=0: expected >= 1"),
])
def test_sft_eval_keys_are_checked_before_training(tmp_path, override, message):
    from test_sft import sft_config, write_copy_task

    data, held_out = write_copy_task(tmp_path, n_train=20, n_eval=5)
    config = sft_config(tmp_path / "run", data, held_out, override.format(tmp=tmp_path))
    with pytest.raises(ValueError, match=message):
        train(config)
    assert not (tmp_path / "run" / "data").exists()  # refused before preparing anything


def test_a_validation_split_smaller_than_a_batch_is_said_and_the_task_eval_still_runs(
        tmp_path, capsys):
    from test_sft import sft_config, write_copy_task

    data, held_out = write_copy_task(tmp_path, n_train=60, n_eval=5)
    config = sft_config(tmp_path / "run", data, held_out, "total_steps=2",
                        "eval.every_steps=2", "sft.eval_examples=2",
                        "sft.eval_max_new_tokens=2")
    result = train(config)
    assert "validation split holds less than one batch" in capsys.readouterr().out
    assert "eval_answer_accuracy" in result and "eval_loss" not in result
    patient = sft_config(tmp_path / "run2", data, held_out, "total_steps=2",
                         "eval.every_steps=2", "eval.patience=2")
    with pytest.raises(ConfigError, match="eval.patience=2: early stopping needs a validation"):
        train(patient)


def two_copy_tasks(tmp_path, second: str):
    """Two small copy-task chat files (the second in `tmp_path/second`) and held-out rows."""
    from test_sft import write_copy_task

    data, held_out = write_copy_task(tmp_path, n_train=120, n_eval=5)
    (tmp_path / second).mkdir()
    other, _ = write_copy_task(tmp_path / second, n_train=120, n_eval=5, seed=1)
    return data, other, held_out


def test_data_tokenised_with_another_vocabulary_than_the_base_is_refused(tmp_path):
    """Same vocabulary size, different pieces: the ids would silently mean other tokens."""
    from test_sft import sft_config

    from llm.checkpoint import CheckpointError

    data, other_data, held_out = two_copy_tasks(tmp_path, "other")
    other_data.write_text(other_data.read_text().replace("repeat", "echo twice"))
    for name, source in (("base", data), ("other", other_data)):
        train(sft_config(tmp_path / name, source, held_out, "total_steps=1",
                         "eval.every_steps=0"))
    config = sft_config(tmp_path / "run", data, held_out, "total_steps=1", "eval.every_steps=0",
                        f"init_from={tmp_path / 'base'}",
                        f"data.tokenizer.path={tmp_path / 'other' / 'tokenizer'}")
    with pytest.raises(CheckpointError, match="its tokenizer .* differs from the one the data"):
        train(config)


def test_data_path_takes_several_comma_separated_inputs(tmp_path):
    from test_sft import sft_config

    data, more, held_out = two_copy_tasks(tmp_path, "more")
    both = f"{data},{more}"
    missing = sft_config(tmp_path / "bad", f"{data},{tmp_path}/nope.jsonl", held_out)
    with pytest.raises(ValueError, match="no such file or directory: .*nope.jsonl"):
        train(missing)
    result = train(sft_config(tmp_path / "run", both, held_out, "total_steps=1",
                              "eval.every_steps=0"))
    assert result["step"] == 1
    manifest = json.loads((tmp_path / "run" / "data" / "manifest.json").read_text())
    assert sorted(i["path"] for i in manifest["inputs"]) == sorted([str(data), str(more)])


def test_a_batch_that_does_not_split_over_the_processes_is_refused(tmp_path, monkeypatch):
    from llm import sharding
    from llm.train import checks

    config = config_for(tmp_path, "batch_size=8")
    mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": -1})
    monkeypatch.setattr(checks.jax, "process_count", lambda: 3)
    with pytest.raises(ConfigError, match="batch_size=8: must divide over the run's 3 "
                       "processes"):
        checks.check_loop_settings(config, mesh)
