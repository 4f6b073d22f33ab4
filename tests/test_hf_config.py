"""config.json layouts (transformers 4.x and 5.x) and the clear errors of the HF bridge.

Runs without torch: the directories are written by our own export and then damaged.
"""

import json
import os

import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from llm.hf import convert as hf
from llm.model import ModelConfig, Transformer

CFG = ModelConfig(family="llama", vocab_size=200, d_model=64, n_layers=2, n_heads=4,
                  n_kv_heads=2, head_dim=16, d_ff=96, max_seq_len=128, norm_eps=1e-6,
                  rope_theta=500_000.0, rope_scaling="llama3", rope_factor=8.0,
                  rope_low_freq_factor=1.0, rope_high_freq_factor=4.0,
                  rope_original_max_len=64)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(directory, params) of a random model exported in float32 as three shards."""
    _, params = nnx.split(Transformer(CFG, nnx.Rngs(0)))
    path = str(tmp_path_factory.mktemp("exported"))
    hf.export_hf(CFG, params, path, dtype="float32", shard_size_bytes=40_000)
    return path, params


@pytest.fixture
def hf_dir(exported, tmp_path):
    """A fresh, writable copy of the exported directory for one test to damage."""
    for name in os.listdir(exported[0]):
        with open(os.path.join(exported[0], name), "rb") as src:
            (tmp_path / name).write_bytes(src.read())
    return str(tmp_path)


def edit_config(path: str, edit) -> None:
    with open(os.path.join(path, "config.json")) as f:
        values = json.load(f)
    edit(values)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(values, f)


def shard_of(path: str, tensor: str) -> str:
    with open(os.path.join(path, "model.safetensors.index.json")) as f:
        return os.path.join(path, json.load(f)["weight_map"][tensor])


def test_export_then_import_is_identity_and_padding_is_zero(exported):
    path, params = exported
    cfg, _, params2, tokenizer_dir = hf.import_hf(path)
    assert cfg == CFG and tokenizer_dir is None
    flat2 = dict(nnx.to_flat_state(params2))
    for key, value in nnx.to_flat_state(params):
        expected = np.array(value[...])
        if key[0] == "embed":
            expected[CFG.vocab_size:] = 0  # padded rows are stripped on export, zero on import
        if key[0] == "lm_head":
            expected[:, CFG.vocab_size:] = 0
        np.testing.assert_array_equal(np.asarray(flat2[key][...]), expected, err_msg=str(key))


def test_transformers_4x_layout_reads_the_same(hf_dir):
    def to_4x(values):
        params = values.pop("rope_parameters")
        values["rope_theta"] = params.pop("rope_theta")
        params["type"] = params.pop("rope_type")  # the oldest 4.x key
        values["rope_scaling"] = params
        values.pop("tie_word_embeddings")  # 4.x omits defaults: decided by lm_head presence
    edit_config(hf_dir, to_4x)
    assert hf.import_hf(hf_dir)[0] == CFG


def test_5x_only_layout_reads_the_same(hf_dir):
    edit_config(hf_dir, lambda v: (v.pop("rope_theta"), v.pop("rope_scaling")))
    assert hf.import_hf(hf_dir)[0] == CFG


def imported_values(params) -> dict:
    """{path: host array} of an nnx.State, the unscanned layer index folded into a stack."""
    flat: dict = {}
    for key, value in nnx.to_flat_state(params):
        if key[0] == "layers" and isinstance(key[1], int):
            flat.setdefault(("layers", *key[2:]), []).append(np.asarray(value[...]))
        else:
            flat[key] = np.asarray(value[...])
    return {k: np.stack(v) if isinstance(v, list) else v for k, v in flat.items()}


def test_dtype_and_unscanned_layers(exported, hf_dir):
    cfg, _, params, _ = hf.import_hf(hf_dir, dtype="bfloat16", scan_layers=False)
    assert cfg.param_dtype == "bfloat16" and not cfg.scan_layers
    q = dict(nnx.to_flat_state(params))[("layers", 1, "attn", "q_proj", "kernel")][...]
    assert q.dtype == np.dtype("bfloat16") and q.shape == (64, 64)
    reference = imported_values(hf.import_hf(hf_dir)[2])  # float32, as in the file
    for key, value in imported_values(params).items():  # float32 -> bfloat16 rounds once
        np.testing.assert_array_equal(value, reference[key].astype(value.dtype), str(key))


def test_bfloat16_file_imports_as_float32_exactly_on_a_mesh(exported, tmp_path):
    from llm import sharding

    path, params = exported
    hf.export_hf(CFG, params, str(tmp_path), dtype="bfloat16", shard_size_bytes=40_000)
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})  # row and column shards
    _, _, params2, _ = hf.import_hf(str(tmp_path), mesh=mesh, dtype="float32")
    reference = imported_values(hf.import_hf(path)[2])
    for key, value in imported_values(params2).items():
        assert value.dtype == np.float32
        expected = reference[key].astype("bfloat16").astype(np.float32)
        np.testing.assert_array_equal(value, expected, str(key))


def test_damaged_safetensors_files_name_the_file(hf_dir):
    name = "model.layers.1.mlp.down_proj.weight"
    shard = shard_of(hf_dir, name)
    original = open(shard, "rb").read()
    with open(shard, "wb") as f:  # cut inside the tensor data
        f.write(original[:len(original) - 100])
    with pytest.raises(hf.HFError, match=f"{os.path.basename(shard)}: file ends at byte"):
        hf.import_hf(hf_dir)
    with open(shard, "wb") as f:
        f.write(b"\xff" * 64)
    with pytest.raises(hf.HFError, match=f"{os.path.basename(shard)}: not a safetensors"):
        hf.import_hf(hf_dir)
    with open(shard, "wb") as f:
        f.write(original)
    tensors = load_file(shard)
    tensors[name] = tensors[name].astype(np.int32)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(hf.HFError, match=f"{name}' has dtype I32"):
        hf.import_hf(hf_dir)


def test_missing_shard_names_the_file(hf_dir):
    shard = shard_of(hf_dir, "model.norm.weight")
    os.remove(shard)
    with pytest.raises(hf.HFError, match=os.path.basename(shard)):
        hf.import_hf(hf_dir)


def test_unsupported_architecture_is_named(hf_dir):
    edit_config(hf_dir, lambda v: v.update(architectures=["GemmaForCausalLM"]))
    with pytest.raises(hf.HFError, match="GemmaForCausalLM"):
        hf.import_hf(hf_dir)


@pytest.mark.parametrize("field", ["hidden_size", "num_hidden_layers", "rms_norm_eps",
                                   "vocab_size"])
def test_missing_config_field_is_named(hf_dir, field):
    edit_config(hf_dir, lambda v: v.pop(field))
    with pytest.raises(hf.HFError, match=f"missing required field '{field}'"):
        hf.import_hf(hf_dir)


def test_missing_rope_field_is_named(hf_dir):
    edit_config(hf_dir, lambda v: v["rope_parameters"].pop("low_freq_factor"))
    with pytest.raises(hf.HFError, match="rope_parameters.low_freq_factor"):
        hf.import_hf(hf_dir)


@pytest.mark.parametrize("field,value", [
    ("rope_parameters", {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}),
    ("attention_bias", True),
    ("hidden_act", "gelu"),
    ("layer_types", ["sliding_attention", "full_attention"]),
])
def test_unsupported_setting_is_named(hf_dir, field, value):
    edit_config(hf_dir, lambda v: v.update({field: value}))
    with pytest.raises(hf.HFError, match=field):
        hf.import_hf(hf_dir)


def test_mismatched_shape_names_the_tensor(hf_dir):
    name = "model.layers.1.self_attn.k_proj.weight"
    shard = shard_of(hf_dir, name)
    tensors = load_file(shard)
    tensors[name] = tensors[name][:16]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(hf.HFError, match=rf"{name}.*\[16, 64\], expected \[32, 64\]"):
        hf.import_hf(hf_dir)


def test_config_disagreeing_with_weights_names_the_tensor(hf_dir):
    edit_config(hf_dir, lambda v: v.update(num_key_value_heads=4))
    with pytest.raises(hf.HFError, match=r"model.layers.0.self_attn.k_proj.weight"):
        hf.import_hf(hf_dir)


def test_missing_and_unexpected_tensors_are_named(hf_dir):
    name = "model.layers.0.post_attention_layernorm.weight"
    shard = shard_of(hf_dir, name)
    tensors = load_file(shard)
    tensors["model.layers.0.self_attn.o_proj.bias"] = np.zeros(64, np.float32)
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(hf.HFError, match="o_proj.bias"):
        hf.import_hf(hf_dir)
    del tensors["model.layers.0.self_attn.o_proj.bias"], tensors[name]
    save_file(tensors, shard, metadata={"format": "pt"})
    with pytest.raises(hf.HFError, match=f"{name}' listed in the index is not in the file"):
        hf.import_hf(hf_dir)
    index_path = os.path.join(hf_dir, "model.safetensors.index.json")
    with open(index_path) as f:
        index = json.load(f)
    del index["weight_map"][name]
    with open(index_path, "w") as f:
        json.dump(index, f)
    with pytest.raises(hf.HFError, match=f"missing tensor '{name}'"):
        hf.import_hf(hf_dir)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(hf.HFError, match="config.json"):
        hf.import_hf(str(tmp_path))


def test_export_refuses_what_transformers_cannot_hold(exported, tmp_path):
    _, params = exported
    with pytest.raises(hf.HFError, match="dtype"):
        hf.export_hf(CFG, params, str(tmp_path), dtype="int8")
    prefixed = ModelConfig(**{**CFG.__dict__, "prefix_len": 4})
    with pytest.raises(hf.HFError, match="prefix_len"):
        hf.export_hf(prefixed, params, str(tmp_path))


def test_tokenizer_files_and_generation_config_travel(exported, tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer.json").write_text("{}")
    (tok / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ x }}"}))
    (tok / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    out = tmp_path / "out"
    hf.export_hf(CFG, exported[1], str(out), tokenizer_dir=str(tok))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        assert (out / name).read_text() == (tok / name).read_text()
    assert json.loads((out / "config.json").read_text())["eos_token_id"] == 7
    assert hf.import_hf(str(out))[3] == str(out)


@pytest.mark.parametrize("text,message", [
    ('{"hidden_size": 64,', r"config.json: not valid JSON"),
    ("[1, 2]", r"config.json: expected a JSON object of config fields, got list"),
])
def test_malformed_config_json_names_the_file(hf_dir, text, message):
    with open(os.path.join(hf_dir, "config.json"), "w") as f:
        f.write(text)
    with pytest.raises(hf.HFError, match=message):
        hf.import_hf(hf_dir)


@pytest.mark.parametrize("field,value,message", [
    ("hidden_size", "sixty-four", "hidden_size='sixty-four' is not an integer"),
    ("num_hidden_layers", 2.5, "num_hidden_layers=2.5 is not an integer"),
    ("rms_norm_eps", "tiny", "rms_norm_eps='tiny' is not a number"),
    ("num_attention_heads", 0, "num_attention_heads=0 is not a positive integer"),
    ("architectures", "LlamaForCausalLM", "architectures='LlamaForCausalLM'"),
    ("rope_parameters", "llama3", "rope_parameters='llama3' is not an object"),
])
def test_config_field_of_the_wrong_type_names_the_key(hf_dir, field, value, message):
    edit_config(hf_dir, lambda v: v.update({field: value}))
    with pytest.raises(hf.HFError, match=f"config.json: {message}"):
        hf.import_hf(hf_dir)


def test_rope_field_of_the_wrong_type_names_the_key(hf_dir):
    edit_config(hf_dir, lambda v: v["rope_parameters"].update(factor="eight"))
    with pytest.raises(hf.HFError, match="rope_parameters.factor='eight' is not a number"):
        hf.import_hf(hf_dir)


@pytest.mark.parametrize("text", ['{"weight_map": {', '{"metadata": {}}', "[]",
                                  '{"weight_map": {"model.norm.weight": 3}}'])
def test_malformed_index_names_the_file(hf_dir, text):
    with open(os.path.join(hf_dir, "model.safetensors.index.json"), "w") as f:
        f.write(text)
    with pytest.raises(hf.HFError, match=r"model.safetensors.index.json: (not valid JSON|"
                                         r"expected a 'weight_map')"):
        hf.import_hf(hf_dir)


def test_import_dtype_is_named(hf_dir):
    with pytest.raises(hf.HFError, match=r"import: dtype='flaot16'; expected one of"):
        hf.import_hf(hf_dir, dtype="flaot16")


def test_export_refuses_a_non_empty_directory_and_keeps_its_files(exported, tmp_path):
    out = tmp_path / "other_model"
    out.mkdir()
    (out / "model.safetensors.index.json").write_text('{"weight_map": {}}')
    (out / "config.json").write_text("{}")
    with pytest.raises(hf.HFError, match="other_model: directory is not empty"):
        hf.export_hf(CFG, exported[1], str(out))
    assert sorted(p.name for p in out.iterdir()) == ["config.json",
                                                     "model.safetensors.index.json"]
    assert (out / "config.json").read_text() == "{}"
    empty = tmp_path / "empty"
    empty.mkdir()
    hf.export_hf(CFG, exported[1], str(empty))  # an empty directory is fine
    assert (empty / "model.safetensors").is_file()


def test_failed_export_leaves_no_directory(exported, tmp_path, monkeypatch):
    def fail(path, tensors, dtype_name):
        with open(path + ".tmp", "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(hf, "_write_safetensors", fail)
    with pytest.raises(OSError, match="disk full"):
        hf.export_hf(CFG, exported[1], str(tmp_path / "out"), shard_size_bytes=40_000)
    assert list(tmp_path.iterdir()) == []
