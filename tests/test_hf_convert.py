"""scripts/convert_hf.py: HF dir -> workdir -> HF dir, tokenizer and chat template included."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from absl import flags
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from llm.hf import convert as hf  # noqa: E402 - after the importorskip guards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHAT_TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"


@pytest.fixture(scope="module")
def script():
    """The script as a module (absl flags may only be defined once per process)."""
    spec = importlib.util.spec_from_file_location(
        "convert_hf", os.path.join(ROOT, "scripts", "convert_hf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(script, *args: str) -> None:
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["convert_hf", *args])
    script.main([])


def convert(script, *args: str) -> None:
    """The script's work for these flags, its errors raised rather than printed."""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["convert_hf", *args])
    script.convert()


def save_tokenizer(path: str) -> None:
    vocab = {f"w{i}": i for i in range(200)}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0",
                                                eos_token="w1", bos_token="w2")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(path)


def test_import_workdir_then_export_round_trip(script, tmp_path):
    config = transformers.Qwen3Config(
        vocab_size=200, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, intermediate_size=96, max_position_embeddings=64,
        tie_word_embeddings=False, eos_token_id=1, bos_token_id=2)
    torch.manual_seed(0)
    model = transformers.Qwen3ForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    src, work, dst = (str(tmp_path / d) for d in ("src", "work", "dst"))
    model.save_pretrained(src)
    save_tokenizer(src)

    run(script, "--mode=import", f"--hf_dir={src}", f"--out={work}")
    with open(os.path.join(work, "config.json")) as f:
        assert json.load(f)["model"]["qk_norm"] is True
    assert os.path.isdir(os.path.join(work, "checkpoints", "0"))
    assert os.path.isfile(os.path.join(work, "tokenizer", "tokenizer.json"))

    run(script, "--mode=export", f"--checkpoint={work}", f"--hf_dir={dst}", "--dtype=float32")
    loaded = transformers.AutoModelForCausalLM.from_pretrained(dst).eval()
    x = torch.tensor(np.random.RandomState(0).randint(0, 200, (2, 12)))
    with torch.no_grad():
        np.testing.assert_allclose(loaded(x).logits.numpy(), model(x).logits.numpy(),
                                   atol=1e-5, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(dst)
    assert tok.chat_template == CHAT_TEMPLATE
    assert tok.apply_chat_template([{"role": "user", "content": "w5"}], tokenize=False) \
        == "<user>w5"
    assert loaded.generation_config.eos_token_id == 1

    # a checkpoints/<step> directory works as well, and the params survive unchanged
    cfg, _, params, tokenizer_dir = script.load_workdir(os.path.join(work, "checkpoints", "0"))
    _, _, direct, _ = hf.import_hf(src)
    assert tokenizer_dir == os.path.join(work, "tokenizer")
    flat = {k: v for k, v in nnx.to_flat_state(nnx.State(params))}
    for key, value in nnx.to_flat_state(direct):
        np.testing.assert_array_equal(np.asarray(flat[key]), np.asarray(value[...]))


def test_merge_lora_on_a_checkpoint_without_adapters_is_a_clear_error(script):
    from flax import nnx

    from llm.model import ModelConfig, Transformer

    graphdef, params = nnx.split(Transformer(ModelConfig(), nnx.Rngs(0)))
    with pytest.raises(script.ConvertError, match="no LoRA adapters"):
        script.merge_lora(graphdef, params)


@pytest.fixture(scope="module")
def small_hf_dir(tmp_path_factory):
    """A tiny LLaMA in HF layout (our own export) with a tokenizer."""
    from llm.model import ModelConfig, Transformer

    cfg = ModelConfig(family="llama", vocab_size=200, d_model=64, n_layers=2, n_heads=4,
                      n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=64)
    path = tmp_path_factory.mktemp("small_hf") / "model"
    hf.export_hf(cfg, nnx.split(Transformer(cfg, nnx.Rngs(0)))[1], str(path))
    save_tokenizer(str(path))
    return path


def snapshot(path) -> dict[str, bytes]:
    """Every file under `path` with its bytes, to show that nothing was touched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "convert_hf.py"),
                           *args], capture_output=True, text=True, cwd=ROOT, timeout=300,
                          env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"})


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0], lines[0]


def test_cli_bad_input_is_one_error_line_and_overwrites_nothing(small_hf_dir, tmp_path):
    before = snapshot(small_hf_dir)
    src = str(small_hf_dir)
    # importing into the source directory used to overwrite its config.json
    assert_one_error_line(run_cli("--mode=import", f"--hf_dir={src}", f"--out={src}"),
                          f"--out={src!r}: exists and is not an empty directory")
    assert snapshot(small_hf_dir) == before
    # checked before the checkpoint is loaded (it does not even exist here)
    assert_one_error_line(run_cli("--mode=export", f"--checkpoint={tmp_path / 'none'}",
                                  f"--hf_dir={tmp_path / 'out'}", "--dtype=bf16"),
                          "--dtype='bf16': expected one of")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"architectures": ')
    assert_one_error_line(run_cli("--mode=import", f"--hf_dir={broken}",
                                  f"--out={tmp_path / 'work'}"),
                          f"{broken / 'config.json'}: not valid JSON")
    assert not (tmp_path / "work").exists()


def test_flag_errors_are_one_line(script, capsys):
    for argv, expected in [(["--mode=sideways"], "--mode=sideways"),
                           ([], "--mode is required"),
                           (["--mode=import", "extra"], "unexpected argument 'extra'")]:
        flags.FLAGS.unparse_flags()
        with pytest.raises(SystemExit) as exit_info:
            script.parse_flags(["convert_hf", *argv])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and expected in err and "\n" not in err, err


def test_main_turns_errors_into_one_line_and_exit_2(script, tmp_path, capsys):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["convert_hf", "--mode=export", f"--checkpoint={tmp_path / 'none'}",
                 f"--hf_dir={tmp_path / 'out'}"])
    with pytest.raises(SystemExit) as exit_info:
        script.main([])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --checkpoint={str(tmp_path / 'none')!r}: no such directory\n")


def test_import_refuses_a_non_empty_out(script, small_hf_dir, tmp_path):
    out = tmp_path / "work"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(script.ConvertError, match=r"--out=.*work': exists and is not an empty"):
        convert(script, "--mode=import", f"--hf_dir={small_hf_dir}", f"--out={out}")
    assert snapshot(out) == {"notes.txt": b"mine"}


def test_save_params_refuses_a_non_empty_directory(small_hf_dir):
    from llm.checkpoint import CheckpointError
    from llm.loading import save_params

    before = snapshot(small_hf_dir)
    with pytest.raises(CheckpointError, match="exists and is not an empty directory"):
        save_params(small_hf_dir, None, None, tokenizer_dir=small_hf_dir)
    assert snapshot(small_hf_dir) == before


def test_export_refuses_a_non_empty_hf_dir_before_loading(script, small_hf_dir, tmp_path):
    before = snapshot(small_hf_dir)
    with pytest.raises(script.ConvertError, match=r"--hf_dir=.*: exists and is not an empty"):
        convert(script, "--mode=export", f"--checkpoint={tmp_path / 'none'}",
                f"--hf_dir={small_hf_dir}")
    assert snapshot(small_hf_dir) == before


@pytest.mark.parametrize("mode", ["import", "export"])
def test_dtype_is_checked_before_loading(script, small_hf_dir, tmp_path, mode):
    source = (f"--hf_dir={small_hf_dir}" if mode == "import" else
              f"--checkpoint={tmp_path / 'none'}")
    out = f"--out={tmp_path / 'out'}"
    with pytest.raises(script.ConvertError, match=r"^--dtype='flaot16': expected one of"):
        convert(script, f"--mode={mode}", source, out, "--dtype=flaot16")


def test_checkpoint_errors_name_the_flag(script, small_hf_dir, tmp_path):
    with pytest.raises(script.ConvertError, match=r"^--checkpoint='.*none': no such directory"):
        convert(script, "--mode=export", f"--checkpoint={tmp_path / 'none'}",
                f"--hf_dir={tmp_path / 'out'}")
    with pytest.raises(script.ConvertError, match=r"^--checkpoint='.*model': expected a "):
        convert(script, "--mode=export", f"--checkpoint={small_hf_dir}",
                f"--hf_dir={tmp_path / 'out'}")


def test_export_keeps_the_checkpoints_own_dtype(script, small_hf_dir, tmp_path, capsys):
    work, dst = str(tmp_path / "work"), tmp_path / "dst"
    run(script, "--mode=import", f"--hf_dir={small_hf_dir}", f"--out={work}",
        "--dtype=float32")
    run(script, "--mode=export", f"--checkpoint={work}", f"--hf_dir={dst}")  # no --dtype
    assert "(float32 weights, the checkpoint's own" in capsys.readouterr().out
    dtypes = set()
    for file in dst.glob("*.safetensors"):
        raw = file.read_bytes()
        header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {"F32"}  # was BF16: a silent loss of precision
