"""Hugging Face `config.json` <-> `ModelConfig`, tensor names, and the HF bridge's error type.

Reads both the transformers 4.x layout (`rope_theta` and `rope_scaling` at the top level) and
the 5.x layout (`rope_parameters`), and writes both so either version loads an export.
Supported architectures: LLaMA 2/3, Mistral, Qwen2, Qwen3 (the `llama` family) and GPT-2.
Anything the model cannot reproduce exactly (another RoPE type, an o_proj bias, per-layer
sliding windows, ...) is refused with an error that names the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from typing import Any

from llm.model import ModelConfig

Path = tuple[str, ...]

LLAMA_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "mistral",
    "Qwen2ForCausalLM": "qwen2",
    "Qwen3ForCausalLM": "qwen3",
}
GPT2_ARCHITECTURES = {"GPT2LMHeadModel": "gpt2"}
ARCHITECTURES = {**LLAMA_ARCHITECTURES, **GPT2_ARCHITECTURES}
# Reward models: the same trunk with `score.weight` [1, D] (num_labels=1) instead of an LM
# head; ours carry it as `score_head` (llm/scoring.py).
CLASSIFIERS = {name.replace("ForCausalLM", "ForSequenceClassification"): name
               for name in LLAMA_ARCHITECTURES}
GELU_TANH = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class HFError(ValueError):
    """A Hugging Face directory, config field or tensor that cannot be imported or exported."""


class _Fields:
    """Typed access to a config.json mapping; errors name the file and the field."""

    def __init__(self, values: dict[str, Any], path: str):
        self.values, self.path = values, path

    def required(self, key: str) -> Any:
        if self.values.get(key) is None:
            raise HFError(f"{self.path}: missing required field {key!r}")
        return self.values[key]

    def optional(self, key: str, default: Any) -> Any:
        value = self.values.get(key)
        return default if value is None else value

    def integer(self, key: str, default: Any = None) -> int:
        """An integer field (required unless a default is given)."""
        value = self.required(key) if default is None else self.optional(key, default)
        return as_int(value, self.path, key)

    def number(self, key: str, default: Any = None) -> float:
        """A number field (required unless a default is given)."""
        value = self.required(key) if default is None else self.optional(key, default)
        return as_float(value, self.path, key)

    def refuse(self, key: str, ok: Any, why: str) -> None:
        """Raise unless the field is absent or equal to `ok` (or in it, for a tuple)."""
        value = self.values.get(key)
        allowed = ok if isinstance(ok, tuple) else (ok,)
        if value is not None and value not in allowed:
            raise HFError(f"{self.path}: {key}={value!r} is not supported ({why})")


def as_int(value: Any, path: str, key: str) -> int:
    """`value` as an int (an integral float counts), or HFError naming the file and key."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise HFError(f"{path}: {key}={value!r} is not an integer")
    return value


def as_float(value: Any, path: str, key: str) -> float:
    """`value` as a float, or HFError naming the file and key."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HFError(f"{path}: {key}={value!r} is not a number")
    return float(value)


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one (per-layer) parameter lives in the HF checkpoint.

    `name` has `{i}` for the layer; `transpose` for torch Linear [out, in] weights; `columns`
    = (start, stop) of our last axis inside a fused HF tensor (GPT-2 c_attn); `pad_axis` is
    our vocabulary axis, padded with zero rows beyond the HF vocabulary.
    """

    name: str
    transpose: bool = False
    columns: tuple[int, int] | None = None
    pad_axis: int | None = None


# Our parameter path (layer index removed) -> HF name; `{i}` is the layer, `{p}` the GPT-2
# prefix ("transformer." in checkpoints saved by transformers, "" in the original release).
_LLAMA_TOP = {
    "embed": Source("model.embed_tokens.weight", pad_axis=0),
    "final_norm/scale": Source("model.norm.weight"),
    "lm_head/kernel": Source("lm_head.weight", transpose=True, pad_axis=1),
    "score_head/kernel": Source("score.weight", transpose=True),
}
_LLAMA_LAYER = {
    "attn_norm/scale": "input_layernorm.weight",
    "mlp_norm/scale": "post_attention_layernorm.weight",
    "attn/q_norm/scale": "self_attn.q_norm.weight",
    "attn/k_norm/scale": "self_attn.k_norm.weight",
    **{f"attn/{m}/bias": f"self_attn.{m}.bias" for m in ("q_proj", "k_proj", "v_proj")},
}
_LLAMA_LINEAR = {"attn": "self_attn", "mlp": "mlp"}  # '<module>/<proj>/kernel', transposed
_GPT2_TOP = {
    "embed": Source("{p}wte.weight", pad_axis=0),
    "pos_embed": Source("{p}wpe.weight"),
    "final_norm/scale": Source("{p}ln_f.weight"),
    "final_norm/bias": Source("{p}ln_f.bias"),
    "lm_head/kernel": Source("lm_head.weight", transpose=True, pad_axis=1),
}
_GPT2_LAYER = {  # Conv1D weights are already [in, out]
    "attn_norm/scale": "ln_1.weight", "attn_norm/bias": "ln_1.bias",
    "mlp_norm/scale": "ln_2.weight", "mlp_norm/bias": "ln_2.bias",
    "attn/o_proj/kernel": "attn.c_proj.weight", "attn/o_proj/bias": "attn.c_proj.bias",
    "mlp/up_proj/kernel": "mlp.c_fc.weight", "mlp/up_proj/bias": "mlp.c_fc.bias",
    "mlp/down_proj/kernel": "mlp.c_proj.weight", "mlp/down_proj/bias": "mlp.c_proj.bias",
}
_GPT2_FUSED = ("q_proj", "k_proj", "v_proj")  # column blocks of attn.c_attn


def source(cfg: ModelConfig, path: Path, prefix: str) -> Source:
    """The HF source of our parameter `path` (layer index removed), or HFError."""
    key, sub = "/".join(path), "/".join(path[1:])
    in_layer = path[0] == "layers"
    if cfg.family == "gpt2":
        if key in _GPT2_TOP:
            top = _GPT2_TOP[key]
            return dataclasses.replace(top, name=top.name.format(p=prefix))
        if in_layer and sub in _GPT2_LAYER:
            return Source(f"{prefix}h.{{i}}.{_GPT2_LAYER[sub]}")
        if in_layer and len(path) == 4 and path[2] in _GPT2_FUSED:
            block = _GPT2_FUSED.index(path[2])
            kind = "weight" if path[3] == "kernel" else "bias"
            return Source(f"{prefix}h.{{i}}.attn.c_attn.{kind}",
                           columns=(block * cfg.d_model, (block + 1) * cfg.d_model))
    else:
        if key in _LLAMA_TOP:
            return _LLAMA_TOP[key]
        if in_layer and sub in _LLAMA_LAYER:
            return Source(f"model.layers.{{i}}.{_LLAMA_LAYER[sub]}")
        if in_layer and len(path) == 4 and path[1] in _LLAMA_LINEAR and path[3] == "kernel":
            return Source(f"model.layers.{{i}}.{_LLAMA_LINEAR[path[1]]}.{path[2]}.weight",
                           transpose=True)
    raise HFError(f"parameter {key!r} has no Hugging Face counterpart")


def layer_split(path: tuple[Any, ...], cfg: ModelConfig) -> tuple[Path, int | None]:
    """Strip the layer index from an unscanned path: (('layers', 3, 'attn', ...)) -> (.., 3)."""
    path = tuple(str(p) for p in path)
    if path[0] == "layers" and not cfg.scan_layers:
        return (path[0], *path[2:]), int(path[1])
    return path, None


def read_json(path: str) -> Any:
    """The parsed JSON file at `path`, or HFError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise HFError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}, column "
                      f"{e.colno})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise HFError(f"{path}: cannot be read ({e})") from None


def load_config_json(hf_dir: str) -> dict[str, Any]:
    """The parsed config.json of `hf_dir`, or HFError naming the missing file."""
    path = os.path.join(hf_dir, "config.json")
    if not os.path.isfile(path):
        raise HFError(f"{hf_dir}: no config.json (not a Hugging Face model directory)")
    values = read_json(path)
    if not isinstance(values, dict):
        raise HFError(f"{path}: expected a JSON object of config fields, got "
                      f"{type(values).__name__}")
    return values


def architecture(values: dict[str, Any], path: str) -> str:
    """The one supported architecture named in `architectures`."""
    names = values.get("architectures") or []
    if isinstance(names, list) and len(names) == 1 and names[0] in CLASSIFIERS:
        return CLASSIFIERS[names[0]]  # the trunk is the causal LM's
    if not isinstance(names, list) or len(names) != 1 or names[0] not in ARCHITECTURES:
        raise HFError(f"{path}: architectures={names!r} is not supported; expected one of "
                      f"{sorted([*ARCHITECTURES, *CLASSIFIERS])}")
    return names[0]


def is_classifier(values: dict[str, Any]) -> bool:
    """Whether a config.json describes a sequence classifier (a reward model)."""
    names = values.get("architectures") or []
    return isinstance(names, list) and len(names) == 1 and names[0] in CLASSIFIERS


def _rope_fields(f: _Fields) -> dict[str, Any]:
    """RoPE theta and scaling from either the 5.x or the 4.x layout."""
    params = f.values.get("rope_parameters")
    if params is not None:
        where = "rope_parameters"
        if not isinstance(params, dict):
            raise HFError(f"{f.path}: rope_parameters={params!r} is not an object")
        if "rope_type" not in params and any(isinstance(v, dict) for v in params.values()):
            raise HFError(f"{f.path}: per-layer-type rope_parameters are not supported")
        theta = params.get("rope_theta", f.optional("rope_theta", 10_000.0))
    else:
        where = "rope_scaling"
        params = f.values.get("rope_scaling") or {}
        theta = f.optional("rope_theta", 10_000.0)
        if not isinstance(params, dict):
            raise HFError(f"{f.path}: rope_scaling={params!r} is not an object")
    kind = params.get("rope_type", params.get("type", "default"))
    out: dict[str, Any] = {"rope_theta": as_float(theta, f.path, "rope_theta")}

    def need(key: str, convert: Callable[[Any, str, str], Any] = as_float) -> Any:
        if params.get(key) is None:
            raise HFError(f"{f.path}: missing required field {where}.{key}")
        return convert(params[key], f.path, f"{where}.{key}")

    if kind == "default":
        out["rope_scaling"] = "none"
    elif kind == "linear":
        out.update(rope_scaling="linear", rope_factor=need("factor"))
    elif kind == "llama3":
        out.update(rope_scaling="llama3", rope_factor=need("factor"),
                   rope_low_freq_factor=need("low_freq_factor"),
                   rope_high_freq_factor=need("high_freq_factor"),
                   rope_original_max_len=need("original_max_position_embeddings", as_int))
    else:
        raise HFError(f"{f.path}: {where}.rope_type={kind!r} is not supported; expected "
                      "'default', 'linear' or 'llama3'")
    f.refuse("partial_rotary_factor", 1.0, "RoPE must rotate the whole head")
    return out


def _sliding_window(f: _Fields, arch: str) -> int:
    """The window when every layer slides, 0 when none does; mixed layers are refused."""
    window = f.values.get("sliding_window")
    layer_types = f.values.get("layer_types")
    if layer_types and not (isinstance(layer_types, list)
                            and all(isinstance(k, str) for k in layer_types)):
        raise HFError(f"{f.path}: layer_types={layer_types!r} is not a list of strings")
    if layer_types:
        kinds = set(layer_types)
        if kinds == {"full_attention"}:
            return 0
        if kinds != {"sliding_attention"}:
            raise HFError(f"{f.path}: layer_types mixes {sorted(kinds)}; one attention kind "
                          "for all layers is supported")
        return f.integer("sliding_window")
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and not f.values.get(
            "use_sliding_window"):
        return 0
    if arch == "LlamaForCausalLM":
        return 0
    return as_int(window or 0, f.path, "sliding_window")


def _llama_config(f: _Fields, arch: str) -> dict[str, Any]:
    hidden = f.integer("hidden_size")
    heads = f.integer("num_attention_heads")
    if heads <= 0:
        raise HFError(f"{f.path}: num_attention_heads={heads} is not a positive integer")
    f.refuse("hidden_act", "silu", "the MLP is SwiGLU")
    f.refuse("mlp_bias", False, "the MLP has no biases")
    f.refuse("attention_bias", False, "an o_proj bias has no counterpart in the model")
    return {
        "family": "llama",
        "vocab_size": f.integer("vocab_size"),
        "d_model": hidden,
        "n_layers": f.integer("num_hidden_layers"),
        "n_heads": heads,
        "n_kv_heads": f.integer("num_key_value_heads", heads),
        "head_dim": f.integer("head_dim", hidden // heads),
        "d_ff": f.integer("intermediate_size"),
        "max_seq_len": f.integer("max_position_embeddings"),
        "norm_eps": f.number("rms_norm_eps"),
        "qkv_bias": arch == "Qwen2ForCausalLM",
        "qk_norm": arch == "Qwen3ForCausalLM",
        "sliding_window": _sliding_window(f, arch),
        **_rope_fields(f),
    }


def _gpt2_config(f: _Fields) -> dict[str, Any]:
    hidden = f.integer("n_embd")
    heads = f.integer("n_head")
    if heads <= 0:
        raise HFError(f"{f.path}: n_head={heads} is not a positive integer")
    f.refuse("activation_function", GELU_TANH, "the MLP uses tanh-approximated GELU")
    f.refuse("scale_attn_weights", True, "attention scores are scaled by 1/sqrt(head_dim)")
    f.refuse("scale_attn_by_inverse_layer_idx", False, "no per-layer attention scaling")
    f.refuse("add_cross_attention", False, "decoder-only")
    return {
        "family": "gpt2",
        "vocab_size": f.integer("vocab_size"),
        "d_model": hidden,
        "n_layers": f.integer("n_layer"),
        "n_heads": heads,
        "n_kv_heads": heads,
        "head_dim": hidden // heads,
        "d_ff": f.integer("n_inner", 4 * hidden),
        "max_seq_len": f.integer("n_positions"),
        "norm_eps": f.number("layer_norm_epsilon"),
    }


def model_config_from_hf(values: dict[str, Any], path: str, tie_embeddings: bool,
                         dtype: str = "float32", scan_layers: bool = True) -> ModelConfig:
    """ModelConfig for a parsed config.json; `tie_embeddings` is decided by the caller."""
    f = _Fields(values, path)
    arch = architecture(values, path)
    fields = _gpt2_config(f) if arch in GPT2_ARCHITECTURES else _llama_config(f, arch)
    if fields["d_model"] % fields["n_heads"] and "head_dim" not in values:
        raise HFError(f"{path}: hidden size {fields['d_model']} is not divisible by the "
                      f"number of heads {fields['n_heads']}")
    cfg = ModelConfig(**fields, tie_embeddings=tie_embeddings, scan_layers=scan_layers,
                      dtype=dtype, param_dtype=dtype)
    try:
        cfg.validate(where=path)
    except ValueError as e:
        raise HFError(str(e)) from e
    return cfg


def export_architecture(cfg: ModelConfig) -> str:
    """The transformers architecture that reproduces `cfg` exactly."""
    if cfg.prefix_len:
        raise HFError("export: model.prefix_len has no transformers "
                      "counterpart; export the base language model")
    if cfg.family == "gpt2":
        if cfg.n_kv_heads != cfg.n_heads or cfg.head_dim * cfg.n_heads != cfg.d_model:
            raise HFError("export: GPT-2 needs n_kv_heads == n_heads and "
                          "head_dim * n_heads == d_model")
        return "GPT2LMHeadModel"
    if cfg.sliding_window and (cfg.qk_norm or cfg.qkv_bias):
        raise HFError("export: model.sliding_window with qk_norm or qkv_bias has no single "
                      "matching transformers architecture")
    if cfg.qk_norm:
        if cfg.qkv_bias:
            raise HFError("export: model.qk_norm with qkv_bias (Qwen3 biases o_proj too)")
        return "Qwen3ForCausalLM"
    if cfg.qkv_bias:
        return "Qwen2ForCausalLM"
    return "MistralForCausalLM" if cfg.sliding_window else "LlamaForCausalLM"


def _rope_json(cfg: ModelConfig) -> dict[str, Any]:
    params: dict[str, Any] = {"rope_type": "default"}
    if cfg.rope_scaling == "linear":
        params = {"rope_type": "linear", "factor": cfg.rope_factor}
    elif cfg.rope_scaling == "llama3":
        params = {"rope_type": "llama3", "factor": cfg.rope_factor,
                  "low_freq_factor": cfg.rope_low_freq_factor,
                  "high_freq_factor": cfg.rope_high_freq_factor,
                  "original_max_position_embeddings": cfg.rope_original_max_len}
    scaling = None if cfg.rope_scaling == "none" else dict(params)
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling,  # transformers 4.x
            "rope_parameters": {**params, "rope_theta": cfg.rope_theta}}  # transformers 5.x


def hf_config_json(cfg: ModelConfig, dtype: str, token_ids: dict[str, Any],
                   classifier: bool = False) -> dict[str, Any]:
    """config.json contents for an export of `cfg` in `dtype` (`classifier`: as a
    `*ForSequenceClassification` reward model with one label)."""
    arch = export_architecture(cfg)
    out = _config_fields(cfg, arch, dtype, token_ids)
    if not classifier:
        return out
    if arch not in LLAMA_ARCHITECTURES:
        raise HFError(f"export: a reward model exports as a LLaMA-family sequence "
                      f"classifier; {arch} has none here")
    if token_ids.get("pad_token_id") is None or (
            token_ids.get("pad_token_id") == token_ids.get("eos_token_id")):
        raise HFError("export: a sequence classifier needs a pad_token_id distinct from "
                      "eos_token_id (transformers reads the score at the last non-pad token)")
    name = arch.replace("ForCausalLM", "ForSequenceClassification")
    return {**out, "architectures": [name], "num_labels": 1, "id2label": {"0": "LABEL_0"},
            "label2id": {"LABEL_0": 0}}


def _config_fields(cfg: ModelConfig, arch: str, dtype: str, token_ids: dict[str, Any]
                   ) -> dict[str, Any]:
    common = {"architectures": [arch], "model_type": ARCHITECTURES[arch],
              "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
              "torch_dtype": dtype, "dtype": dtype, "use_cache": True,
              "bos_token_id": None, "eos_token_id": None, "pad_token_id": None, **token_ids}
    if arch == "GPT2LMHeadModel":
        return {**common, "n_embd": cfg.d_model, "n_layer": cfg.n_layers,
                "n_head": cfg.n_heads, "n_inner": cfg.d_ff, "n_positions": cfg.max_seq_len,
                "layer_norm_epsilon": cfg.norm_eps, "activation_function": "gelu_new",
                "resid_pdrop": cfg.resid_dropout, "embd_pdrop": cfg.embed_dropout,
                "attn_pdrop": cfg.attn_dropout, "scale_attn_weights": True}
    out = {**common, "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
           "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
           "head_dim": cfg.head_dim, "intermediate_size": cfg.d_ff,
           "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
           "hidden_act": "silu", "attention_dropout": cfg.attn_dropout, **_rope_json(cfg)}
    if arch in ("LlamaForCausalLM", "Qwen3ForCausalLM"):
        out.update(attention_bias=False, mlp_bias=False)
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        out.update(use_sliding_window=False, sliding_window=None,
                   layer_types=["full_attention"] * cfg.n_layers)
    if arch == "MistralForCausalLM":
        out["sliding_window"] = cfg.sliding_window
    return out


def model_config_dict(cfg: ModelConfig) -> dict[str, Any]:
    """The `model` section of a workdir's config.json."""
    return dataclasses.asdict(cfg)
