"""Parity with transformers: import, greedy generation, export, round trip, 8-device mesh.

Each tiny model is created by transformers itself with every weight randomised (norm scales
and biases included, so a dropped or misplaced one changes the logits), saved with
`save_pretrained`, and compared with our import in float32.
"""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from llm import sharding  # noqa: E402 - after the importorskip guards
from llm.hf import convert as hf  # noqa: E402

VOCAB = 200  # padded to 256 by the model, so padding is exercised
SMALL = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, intermediate_size=96,
             max_position_embeddings=128, rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
VARIANTS = {
    "llama_tied_linear_rope": ("LlamaConfig", "LlamaForCausalLM",
                               dict(SMALL, tie_word_embeddings=True,
                                    rope_scaling={"rope_type": "linear", "factor": 2.0},
                                    rope_theta=500.0)),
    "llama_untied_llama3_rope": ("LlamaConfig", "LlamaForCausalLM",
                                 dict(SMALL, tie_word_embeddings=False,
                                      rope_scaling=LLAMA3_ROPE)),
    "mistral_sliding_window": ("MistralConfig", "MistralForCausalLM",
                               dict(SMALL, sliding_window=8)),
    "qwen2_bias": ("Qwen2Config", "Qwen2ForCausalLM",
                   dict(SMALL, head_dim=None, tie_word_embeddings=False)),
    "qwen3_qk_norm": ("Qwen3Config", "Qwen3ForCausalLM",
                      dict(SMALL, head_dim=24, tie_word_embeddings=True)),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_inner=96,
                  n_positions=128, bos_token_id=0, eos_token_id=1)),
}
SEQ = 24  # longer than the Mistral window


def make_hf_model(variant: str, seed: int = 0):
    """A transformers model of `variant` with all weights random (norms around 1)."""
    config_cls, model_cls, kwargs = VARIANTS[variant]
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            is_norm = p.ndim == 1 and ("norm" in name or ".ln_" in name) and "bias" not in name
            p.copy_(1 + 0.2 * torch.randn_like(p) if is_norm else 0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def hf_dirs(tmp_path_factory):
    """variant -> (directory saved by transformers, the torch model)."""
    out = {}
    for variant in VARIANTS:
        model = make_hf_model(variant)
        path = str(tmp_path_factory.mktemp(variant))
        model.save_pretrained(path)
        out[variant] = (path, model)
    return out


def tokens(batch: int = 2, length: int = SEQ, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, VOCAB, (batch, length)).astype(np.int32)


@jax.jit
def _apply(graphdef, params, tokens_BT):
    return nnx.merge(graphdef, params)(tokens_BT)[0]


def our_logits(graphdef, params, tokens_BT) -> np.ndarray:
    return np.asarray(_apply(graphdef, params, tokens_BT))[..., :VOCAB]


def torch_logits(model, tokens_BT) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens_BT, dtype=torch.long)).logits.float().numpy()


def our_greedy(graphdef, params, prompt_BT: np.ndarray, n: int):
    """Greedy continuation by full recompute on a causal, fixed-size buffer (one compile)."""
    B, P = prompt_BT.shape
    buf = np.zeros((B, max(P + n, SEQ)), np.int32)
    buf[:, :P] = prompt_BT
    step_logits = []
    for t in range(n):
        logits = np.asarray(_apply(graphdef, params, buf))[:, P + t - 1, :VOCAB]
        buf[:, P + t] = logits.argmax(-1)
        step_logits.append(logits)
    return buf[:, P:P + n], np.stack(step_logits, 1)


def assert_same_greedy(ours_BN, logits_BNV, theirs_BN):
    """Same tokens, except that a flip at a near-tie (top two within 1e-5) ends the check."""
    for b in range(ours_BN.shape[0]):
        for t in range(ours_BN.shape[1]):
            if ours_BN[b, t] != theirs_BN[b, t]:
                top2 = np.sort(logits_BNV[b, t])[-2:]
                assert top2[1] - top2[0] <= 1e-5, (b, t, ours_BN[b], theirs_BN[b])
                break


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_logits_and_greedy_match_transformers(hf_dirs, variant):
    path, model = hf_dirs[variant]
    cfg, graphdef, params, _ = hf.import_hf(path)
    assert cfg.padded_vocab == 256 and cfg.vocab_size == VOCAB
    x = tokens()
    ref = torch_logits(model, x)
    ours = our_logits(graphdef, params, x)
    assert ref.std() > 0.3  # random weights large enough that a wrong mapping shows
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)

    prompt, n = tokens(2, 6, seed=1), 8
    model.generation_config.eos_token_id = None  # never stop early: compare all n tokens
    gen = transformers.GenerationConfig(do_sample=False, max_new_tokens=n, pad_token_id=0)
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompt, dtype=torch.long),
                                attention_mask=torch.ones(prompt.shape, dtype=torch.long),
                                generation_config=gen).numpy()[:, prompt.shape[1]:]
    ours_tokens, step_logits = our_greedy(graphdef, params, prompt, n)
    assert theirs.shape == ours_tokens.shape
    assert_same_greedy(ours_tokens, step_logits, theirs)


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_export_loads_in_transformers(hf_dirs, variant, tmp_path):
    path, model = hf_dirs[variant]
    cfg, graphdef, params, _ = hf.import_hf(path)
    out = str(tmp_path / "export")
    hf.export_hf(cfg, params, out, dtype="float32", shard_size_bytes=60_000)
    files = sorted(os.listdir(out))
    assert "model.safetensors.index.json" in files and "generation_config.json" in files
    assert sum(f.endswith(".safetensors") for f in files) > 1
    with open(os.path.join(out, "model.safetensors.index.json")) as f:
        index = json.load(f)["weight_map"]
    embed = "transformer.wte.weight" if variant == "gpt2" else "model.embed_tokens.weight"
    from safetensors import safe_open
    with safe_open(os.path.join(out, index[embed]), "np") as f:
        assert f.get_slice(embed).get_shape()[0] == VOCAB  # padded rows stripped

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(loaded) is type(model)
    x = tokens(seed=2)
    np.testing.assert_allclose(torch_logits(loaded, x), torch_logits(model, x), atol=1e-5,
                               rtol=0)


def test_import_export_import_is_identity(hf_dirs, tmp_path):
    for variant in VARIANTS:
        cfg, _, params, _ = hf.import_hf(hf_dirs[variant][0])
        out = str(tmp_path / variant)
        hf.export_hf(cfg, params, out, dtype="float32")
        cfg2, _, params2, _ = hf.import_hf(out)
        assert cfg2 == cfg, variant
        flat, flat2 = dict(nnx.to_flat_state(params)), dict(nnx.to_flat_state(params2))
        assert flat.keys() == flat2.keys()
        for key in flat:
            np.testing.assert_array_equal(np.asarray(flat[key][...]),
                                          np.asarray(flat2[key][...]), err_msg=str(key))


def test_bfloat16_export_loads_in_transformers(hf_dirs, tmp_path):
    path, model = hf_dirs["qwen2_bias"]
    cfg, _, params, _ = hf.import_hf(path)
    hf.export_hf(cfg, params, str(tmp_path), dtype="bfloat16")
    assert os.listdir(tmp_path).count("model.safetensors") == 1
    loaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path)).eval()
    assert loaded.dtype == torch.bfloat16
    x = tokens(seed=3)
    np.testing.assert_allclose(torch_logits(loaded.float(), x), torch_logits(model, x),
                               atol=0.1, rtol=0)


@pytest.mark.parametrize("variant", ["llama_untied_llama3_rope", "gpt2"])
def test_import_on_8_device_mesh_equals_one_device(hf_dirs, variant):
    assert jax.device_count() == 8, "tests/conftest.py forces 8 CPU devices"
    path, _ = hf_dirs[variant]
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    cfg, graphdef, params, _ = hf.import_hf(path, mesh=mesh)
    _, graphdef1, params1, _ = hf.import_hf(path)
    _, graphdef_u, params_u, _ = hf.import_hf(path, scan_layers=False)
    flat = dict(nnx.to_flat_state(params))
    q = flat[("layers", "attn", "q_proj", "kernel")][...]
    assert len(q.sharding.device_set) == 8
    assert q.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert not q.sharding.is_fully_replicated
    x = tokens(seed=4)
    one = our_logits(graphdef1, params1, x)
    np.testing.assert_allclose(our_logits(graphdef, params, x), one, atol=1e-5, rtol=0)
    np.testing.assert_allclose(our_logits(graphdef_u, params_u, x), one, atol=1e-5, rtol=0)
    flat1 = dict(nnx.to_flat_state(params1))
    for key in flat:  # the placed values are exactly the single-device ones
        np.testing.assert_array_equal(np.asarray(flat[key][...]), np.asarray(flat1[key][...]))
