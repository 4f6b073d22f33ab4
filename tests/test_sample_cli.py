"""scripts/sample.py end to end: an imported Hugging Face model, prompts file in, JSONL out."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def test_sample_script_greedy_matches_transformers_generate(tmp_path):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path / "hf")
    prompts = [[5, 17, 42], [7, 8, 9, 10, 11, 12]]
    (tmp_path / "in.jsonl").write_text(
        "".join(json.dumps({"prompt_ids": p}) + "\n" for p in prompts))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run(
        [sys.executable, "scripts/sample.py", "--config=configs/sample.py",
         f"--config.init_from=hf:{tmp_path / 'hf'}", f"--config.prompts_file={tmp_path}/in.jsonl",
         f"--config.output_file={tmp_path}/out.jsonl", "--config.temperature=0",
         "--config.max_new_tokens=8"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in rows] == ["length", "length"]
    for prompt, row in zip(prompts, rows, strict=True):
        with torch.no_grad():
            ids = torch.tensor([prompt])
            theirs = model.generate(ids, max_new_tokens=8, do_sample=False,
                                    eos_token_id=None, pad_token_id=0)[0, len(prompt):]
            logits = model(torch.cat([ids, theirs[None]], 1)).logits[0, len(prompt) - 1:-1]
        top2 = np.sort(logits.numpy(), axis=-1)[:, -2:]
        flips = [i for i, (a, b) in enumerate(zip(row["tokens"], theirs.tolist(),
                                                   strict=True)) if a != b]
        # A flip is allowed only at a near-tie, and then the rest may differ.
        assert not flips or top2[flips[0], 1] - top2[flips[0], 0] < 1e-5
        assert len(row["logprobs"]) == 8


def test_sample_script_bad_control_is_one_clear_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, "scripts/sample.py", "--config=configs/sample.py",
         "--config.init_from=/nonexistent", "--config.prompt=hi", "--config.top_p=1.5"],
        capture_output=True, text=True, timeout=300)
    # The controls are checked before the model loads: the error names the key, not the
    # missing model.
    assert "top_p=[1.5]" in _one_error(proc)


def _sample_module():
    spec = importlib.util.spec_from_file_location("sample_script", "scripts/sample.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("key, value, match", [
    ("batch_size", 0, "batch_size=0: expected >= 1"),
    ("chunk_size", -1, "chunk_size=-1: expected >= 1"),
    ("beam_width", 0, "beam_width=0: expected >= 1"),
    ("max_len", -5, "max_len=-5: expected >= 0"),
    ("decode_sharding", "tensr", "decode_sharding='tensr': expected one of training, tensor"),
    ("stop", (123,), "stop=\\[123\\]: expected strings"),
    ("stop_token_ids", ("abc",), "stop_token_ids=\\['abc'\\]: expected token ids"),
    ("temperature", -1.0, "temperature"),
    ("seed", 2**40, "seed"),
])
def test_bad_sampling_keys_are_refused_before_the_model_loads(key, value, match):
    sample = _sample_module()
    from configs.sample import get_config
    config = get_config()
    with config.unlocked():
        config[key] = value
    with pytest.raises(ValueError, match=match):
        sample.check_config(config)
    assert sample.check_config(get_config())["top_p"] == 0.9  # the defaults pass


def _sample(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "scripts/sample.py", "--config=configs/sample.py",
                           "--config.init_from=/nonexistent", *flags],
                          capture_output=True, text=True, timeout=300)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    return line


def test_prompts_file_errors_name_the_file_and_line(tmp_path):
    missing = _one_error(_sample(f"--config.prompts_file={tmp_path}/none.jsonl"))
    assert "none.jsonl" in missing and "No such file" in missing
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a"}\n\n{oops\n')
    assert f"{bad} line 3: not valid JSON" in _one_error(_sample(f"--config.prompts_file={bad}"))
    bad.write_text('{"prompt": "a"}\n["a list"]\n')
    assert "line 2: expected a JSON object" in _one_error(
        _sample(f"--config.prompts_file={bad}"))
    bad.write_bytes(b"\xff\xfe binary")
    assert "bad.jsonl': not UTF-8" in _one_error(
        _sample(f"--config.prompts_file={bad}"))


def test_existing_output_file_is_never_overwritten(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("results from yesterday\n")
    line = _one_error(_sample("--config.prompt=hi", f"--config.output_file={out}"))
    assert "exists" in line and out.read_text() == "results from yesterday\n"
    line = _one_error(_sample("--config.prompt=hi", f"--config.output_file={tmp_path}/no/o.jsonl"))
    assert "does not exist" in line


@pytest.mark.slow
def test_sample_script_on_a_workdir_with_a_tokenizer_prompt_and_chat(tmp_path):
    """A short SFT run (tokenizer trained from its data); the CLI finds the newest
    checkpoint and the tokenizer, completes --config.prompt and chats on stdin."""
    from test_sft import sft_config, write_copy_task

    from llm.train.loop import train

    data, held_out = write_copy_task(tmp_path, n_train=200, n_eval=20)
    train(sft_config(tmp_path / "run", data, held_out, "total_steps=2", "eval.every_steps=0",
                     "checkpoint.every_steps=2"))
    base = [sys.executable, "scripts/sample.py", "--config=configs/sample.py",
            f"--config.init_from={tmp_path / 'run'}", "--config.temperature=0",
            "--config.max_new_tokens=5"]
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    proc = subprocess.run([*base, "--config.prompt=repeat: red blue"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    single = proc.stdout
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"prompt": "repeat: red blue"}) + "\n"
                    + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = subprocess.run([*base, f"--config.prompts_file={rows}"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 2 and all(1 <= len(r["tokens"]) <= 5 for r in out)
    assert single == "repeat: red blue" + out[0]["completion"] + "\n"  # same greedy text
    chat = subprocess.run([*base, "--config.chat=True"], input="hi\nred\n",
                          capture_output=True, text=True, env=env, timeout=300)
    assert chat.returncode == 0, chat.stderr[-2000:]
    assert chat.stdout.count("> ") == 3  # two turns answered, then end of input
