"""Hugging Face safetensors import / export for `llm.model.Transformer`.

Import is streaming: the model is traced abstractly (`nnx.eval_shape`), every parameter gets
its NamedSharding from its logical axes, and each device's slice is read straight from the
safetensors file (`safe_open(...).get_slice`), so a host only ever reads the slices its own
devices hold. Scan-stacked layers are filled one layer at a time into a donated, already
sharded buffer. Peak host memory stays about one tensor above the final arrays.

Export writes one tensor at a time into safetensors shards (+ `model.safetensors.index.json`),
with config.json, generation_config.json and the tokenizer files, padded vocabulary rows
stripped. The name mapping (`llm.hf_config.source`) serves both directions.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx
from safetensors import safe_open

from llm import sharding as sharding_lib
from llm.hf_config import (
    GPT2_ARCHITECTURES,
    HFError,
    Path,
    Source,
    architecture,
    hf_config_json,
    layer_split,
    load_config_json,
    model_config_from_hf,
    source,
)
from llm.model import ModelConfig, Transformer

__all__ = ["HFError", "import_hf", "export_hf", "TOKENIZER_FILES"]

TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt",
                   "chat_template.jinja", "chat_template.json", "generation_config.json")
SAFETENSORS_DTYPES = {"float32": ("F32", np.float32), "bfloat16": ("BF16", ml_dtypes.bfloat16),
                      "float16": ("F16", np.float16)}
# Buffers some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")

class _Checkpoint:
    """Tensor names -> safetensors files of one HF directory; reads slices on demand."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index_path = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index_path):
            with open(index_path) as f:
                weight_map = json.load(f)["weight_map"]
        elif os.path.isfile(single):
            weight_map = {name: "model.safetensors" for name in self._keys(single)}
        else:
            raise HFError(f"{hf_dir}: neither model.safetensors nor "
                          "model.safetensors.index.json")
        for name, file in sorted(weight_map.items()):
            if not os.path.isfile(os.path.join(hf_dir, file)):
                raise HFError(f"{hf_dir}: shard {file!r} listed in the index (for tensor "
                              f"{name!r}) is missing")
        self.files = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
        self.shapes: dict[str, tuple[int, ...]] = {}
        for file in sorted(set(self.files.values())):
            with safe_open(file, "np") as f:
                for name in f.keys():
                    self.shapes[name] = tuple(f.get_slice(name).get_shape())
        for name in self.files:
            if name not in self.shapes:
                raise HFError(f"{self.files[name]}: tensor {name!r} listed in the index is "
                              "not in the file")

    @staticmethod
    def _keys(file: str) -> list[str]:
        with safe_open(file, "np") as f:
            return list(f.keys())

    def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
        """One slice of one tensor; the file is opened per read so its pages are released."""
        with safe_open(self.files[name], "np") as f:
            return f.get_slice(name)[index]


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [s.indices(n)[:2] for s, n in zip(index, shape, strict=True)]


def _read_slice(ckpt: _Checkpoint, src: Source, layer: int | None, shape: tuple[int, ...],
                index: tuple[slice, ...], dtype: Any) -> np.ndarray:
    """Our slice `index` of a per-layer parameter of `shape`, read from its HF tensor."""
    name = src.name.format(i=layer)
    bounds = _bounds(index, shape)
    out_shape = tuple(b - a for a, b in bounds)
    want = list(bounds)
    if src.pad_axis is not None:  # rows beyond the HF vocabulary stay zero
        hf_vocab = ckpt.shapes[name][0]
        a, b = want[src.pad_axis]
        want[src.pad_axis] = (min(a, hf_vocab), min(b, hf_vocab))
    if src.columns is not None:
        a, b = want[-1]
        want[-1] = (a + src.columns[0], b + src.columns[0])
    hf_index = tuple(slice(a, b) for a, b in (want[::-1] if src.transpose else want))
    data = ckpt.read(name, hf_index)
    if src.transpose:
        data = _transpose(data)
    data = data.astype(dtype, copy=False)
    if data.shape == out_shape:
        return data
    out = np.zeros(out_shape, dtype)  # vocabulary padding: zero rows
    out[tuple(slice(0, n) for n in data.shape)] = data
    return out


def _transpose(x: np.ndarray, block: int = 128) -> np.ndarray:
    """A contiguous 2-D transpose, tile by tile (cache-friendly; ~2x numpy's strided copy).

    Works on an integer view of the same width: numpy copies bfloat16 element by element.
    """
    bits = x.view(np.dtype(f"u{x.dtype.itemsize}"))
    out = np.empty(x.shape[::-1], bits.dtype)
    for i in range(0, x.shape[0], block):
        for j in range(0, x.shape[1], block):
            out[j:j + block, i:i + block] = bits[i:i + block, j:j + block].T
    return out.view(x.dtype)


def _expected_hf_shape(src: Source, shape: tuple[int, ...], vocab: int) -> tuple[int, ...]:
    """The HF tensor shape implied by our per-layer `shape` (vocab unpadded, fused widths)."""
    hf = list(shape)
    if src.pad_axis is not None:
        hf[src.pad_axis] = vocab
    if src.columns is not None:
        hf[-1] = None  # a fused tensor: checked by the column range below
    return tuple(hf[::-1] if src.transpose else hf)


def _check_shape(ckpt: _Checkpoint, src: Source, name: str, shape: tuple[int, ...],
                 vocab: int) -> None:
    if name not in ckpt.shapes:
        raise HFError(f"{ckpt.hf_dir}: missing tensor {name!r}")
    found = ckpt.shapes[name]
    want = _expected_hf_shape(src, shape, vocab)
    ok = len(found) == len(want) and all(w is None or w == n for w, n in zip(want, found,
                                                                         strict=False))
    if src.columns is not None and ok:
        ok = found[-1] >= src.columns[1]
    if not ok:
        raise HFError(f"{ckpt.files[name]}: tensor {name!r} has shape {list(found)}, "
                      f"expected {[('?' if w is None else w) for w in want]}")


def _place(shape: tuple[int, ...], sharding: jax.sharding.Sharding,
           read: Callable[[tuple[slice, ...]], np.ndarray]) -> jax.Array:
    """A global array whose local shards are read one at a time (replicas read once)."""
    by_key: dict[tuple, list[tuple[jax.Device, tuple[slice, ...]]]] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        by_key.setdefault(tuple(_bounds(index, shape)), []).append((device, index))
    arrays = []
    for pairs in by_key.values():
        host = read(pairs[0][1])
        arrays.extend(jax.device_put(host, device) for device, _ in pairs)
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


@functools.cache
def _stack_fns(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding):
    zeros = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    put = jax.jit(lambda stacked, layer, i: jax.lax.dynamic_update_index_in_dim(
        stacked, layer, i, 0), donate_argnums=0, out_shardings=sharding)
    return zeros, put


def _layer_sharding(sharding: jax.sharding.NamedSharding) -> jax.sharding.NamedSharding:
    spec = tuple(sharding.spec) + (None,) * 8
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec[1:]))


def import_hf(hf_dir: str, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None,
              scan_layers: bool = True, rules: Mapping[str, Any] | None = None
              ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State, str | None]:
    """Load a HF model directory: (ModelConfig, graphdef, params, tokenizer dir or None).

    Parameters are born sharded on `mesh` (default: the first device) following the logical
    rules; `dtype` sets the parameter and compute dtype (default float32).
    """
    values = load_config_json(hf_dir)
    config_path = os.path.join(hf_dir, "config.json")
    arch = architecture(values, config_path)
    ckpt = _Checkpoint(hf_dir)
    prefix = ""
    if arch in GPT2_ARCHITECTURES and any(n.startswith("transformer.") for n in ckpt.shapes):
        prefix = "transformer."
    has_head = "lm_head.weight" in ckpt.shapes
    tied = values.get("tie_word_embeddings")
    tied = (not has_head) if tied is None else bool(tied)
    cfg = model_config_from_hf(values, config_path, tied, dtype or "float32", scan_layers)

    mesh = mesh or sharding_lib.make_mesh(devices=jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: Transformer(cfg, nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    shardings = sharding_lib.state_shardings(abstract_state, mesh, rules)
    flat = list(nnx.to_flat_state(abstract_state))
    flat_shardings = dict(nnx.to_flat_state(shardings))

    plan = []
    used = set()
    for path, var in flat:
        our, layer = layer_split(path, cfg)
        src = source(cfg, our, prefix)
        stacked = cfg.scan_layers and our[0] == "layers"
        per_layer_shape = tuple(var.shape[1:]) if stacked else tuple(var.shape)
        layers = range(cfg.n_layers) if stacked else [layer]
        for i in layers:
            name = src.name.format(i=i)
            _check_shape(ckpt, src, name, per_layer_shape, cfg.vocab_size)
            used.add(name)
        plan.append((path, var, src, stacked, per_layer_shape, layer))
    unused = sorted(n for n in ckpt.shapes if n not in used and not n.endswith(
        _IGNORED_SUFFIXES) and not (n == "lm_head.weight" and cfg.tie_embeddings))
    if unused:
        raise HFError(f"{hf_dir}: tensors {unused[:5]} have no place in the model "
                      f"({len(unused)} unused)")

    np_dtype = np.dtype(cfg.weight_dtype)
    values_out = {}
    for path, var, src, stacked, per_layer_shape, layer in plan:
        target = flat_shardings[path].get_value()

        def read(index, i=layer, src=src, shp=per_layer_shape):
            return _read_slice(ckpt, src, i, shp, index, np_dtype)

        if stacked:
            zeros, put = _stack_fns(tuple(var.shape), np_dtype, target)
            array = zeros()
            layer_target = _layer_sharding(target)
            for i in range(cfg.n_layers):
                piece = _place(per_layer_shape, layer_target,
                               functools.partial(read, i=i))
                array = put(array, piece, i)
                del piece
        else:
            array = _place(per_layer_shape, target, read)
        values_out[path] = array
    params = nnx.from_flat_state(
        [(path, var.replace(values_out[path])) for path, var in flat])
    tokenizer_dir = hf_dir if any(os.path.isfile(os.path.join(hf_dir, n)) for n in (
        "tokenizer.model", "tokenizer.json")) else None
    return cfg, graphdef, params, tokenizer_dir


# ----------------------------------------------------------------------------- export


def _flat_params(params: Any) -> dict[Path, Any]:
    """{path of str: array} from an nnx.State or a nested mapping (e.g. an orbax restore)."""
    if isinstance(params, nnx.State):
        return {tuple(str(p) for p in path): (v[...] if isinstance(v, nnx.Variable) else v)
                for path, v in nnx.to_flat_state(params)}
    out: dict[Path, Any] = {}

    def walk(node: Any, prefix: Path) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, (*prefix, str(k)))
        elif isinstance(node, nnx.Variable):
            out[prefix] = node[...]
        elif isinstance(node, list | tuple):
            for k, v in enumerate(node):
                walk(v, (*prefix, str(k)))
        else:
            out[prefix] = node
    walk(params, ())
    return out


def _to_host(array: Any, dtype: Any) -> np.ndarray:
    """Gather a (possibly multi-host sharded) array to this host in `dtype`."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        from jax.experimental import multihost_utils
        array = multihost_utils.process_allgather(array, tiled=True)
    return np.asarray(jax.device_get(array)).astype(dtype)


def _export_plan(cfg: ModelConfig, flat: dict[Path, Any], dtype: Any
                 ) -> list[tuple[str, tuple[int, ...], Callable[[], np.ndarray]]]:
    """(HF name, HF shape, build) per HF tensor, in checkpoint order; nothing read yet."""
    prefix = "transformer." if cfg.family == "gpt2" else ""
    groups: dict[str, list[tuple[Source, Any, int | None, tuple[int, ...]]]] = {}
    for path in sorted(flat):
        our, layer = layer_split(path, cfg)
        src = source(cfg, our, prefix)
        array = flat[path]
        stacked = cfg.scan_layers and our[0] == "layers"
        shape = tuple(array.shape[1:]) if stacked else tuple(array.shape)
        for i in (range(cfg.n_layers) if stacked else [layer]):
            groups.setdefault(src.name.format(i=i), []).append(
                (src, array, i if stacked else None, shape))

    def build(parts) -> np.ndarray:
        pieces = []
        for src, array, i, _ in sorted(parts, key=lambda p: (p[0].columns or (0, 0))):
            value = _to_host(array if i is None else array[i], dtype)
            if src.pad_axis is not None:
                value = np.take(value, np.arange(cfg.vocab_size), axis=src.pad_axis)
            pieces.append(value.T if src.transpose else value)
        return pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=-1)

    plan = []
    for name, parts in groups.items():
        src, _, _, shape = parts[0]
        hf = list(shape)
        if src.pad_axis is not None:
            hf[src.pad_axis] = cfg.vocab_size
        if src.columns is not None:
            hf[-1] = sum(p[3][-1] for p in parts)
        hf_shape = tuple(hf[::-1] if src.transpose else hf)
        plan.append((name, hf_shape, functools.partial(build, parts)))
    return sorted(plan, key=lambda p: _natural_key(p[0]))


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in name.replace(".", " . ").split()]


def _write_safetensors(path: str, tensors: list[tuple[str, tuple[int, ...], Callable]],
                       dtype_name: str) -> None:
    """Stream tensors into one safetensors file: header first, then one tensor at a time."""
    code, np_dtype = SAFETENSORS_DTYPES[dtype_name]
    itemsize = np.dtype(np_dtype).itemsize
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape, _ in tensors:
        size = int(np.prod(shape)) * itemsize
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [offset,
                                                                              offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape, build in tensors:
            value = np.ascontiguousarray(build(), dtype=np_dtype)
            if value.shape != tuple(shape):
                raise HFError(f"export: tensor {name!r} built with shape {value.shape}, "
                              f"expected {shape}")
            f.write(value.tobytes())
            del value
    os.replace(tmp, path)


def _shards(plan: list, limit: int, itemsize: int) -> Iterator[list]:
    shard: list = []
    size = 0
    for entry in plan:
        nbytes = int(np.prod(entry[1])) * itemsize
        if shard and size + nbytes > limit:
            yield shard
            shard, size = [], 0
        shard.append(entry)
        size += nbytes
    if shard:
        yield shard


def _token_ids(tokenizer_dir: str | None) -> dict[str, Any]:
    path = os.path.join(tokenizer_dir or "", "generation_config.json")
    if not tokenizer_dir or not os.path.isfile(path):
        return {}
    with open(path) as f:
        values = json.load(f)
    return {k: values[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if k in values}


def export_hf(model_cfg: ModelConfig, params: Any, out_dir: str, dtype: str = "bfloat16",
              tokenizer_dir: str | None = None, shard_size_bytes: int = 2 * 1024**3) -> None:
    """Write a directory transformers loads: config, shards + index, tokenizer files."""
    if dtype not in SAFETENSORS_DTYPES:
        raise HFError(f"export: dtype={dtype!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
    flat = _flat_params(params)
    token_ids = _token_ids(tokenizer_dir)
    config = hf_config_json(model_cfg, dtype, token_ids)
    plan = _export_plan(model_cfg, flat, SAFETENSORS_DTYPES[dtype][1])
    if jax.process_index() != 0:  # every process joins the gathers, one writes
        for _, _, build in plan:
            build()
        return
    os.makedirs(out_dir, exist_ok=True)
    itemsize = np.dtype(SAFETENSORS_DTYPES[dtype][1]).itemsize
    shards = list(_shards(plan, shard_size_bytes, itemsize))
    weight_map = {}
    for k, shard in enumerate(shards):
        file = "model.safetensors" if len(shards) == 1 else \
            f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        _write_safetensors(os.path.join(out_dir, file), shard, dtype)
        weight_map.update({name: file for name, _, _ in shard})
    if len(shards) > 1:
        total = sum(int(np.prod(s)) * itemsize for _, s, _ in plan)
        _write_json(os.path.join(out_dir, "model.safetensors.index.json"),
                    {"metadata": {"total_size": total}, "weight_map": weight_map})
    if tokenizer_dir:
        for name in TOKENIZER_FILES:
            if os.path.isfile(os.path.join(tokenizer_dir, name)):
                shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    if not os.path.isfile(os.path.join(out_dir, "generation_config.json")):
        _write_json(os.path.join(out_dir, "generation_config.json"),
                    {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                     if config.get(k) is not None})
    _write_json(os.path.join(out_dir, "config.json"), config)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
