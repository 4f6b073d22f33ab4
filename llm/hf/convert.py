"""Hugging Face safetensors import / export for `llm.model.Transformer`.

Import is streaming: the model is traced abstractly (`nnx.eval_shape`), every parameter gets
its NamedSharding from its logical axes, and each distinct device shard is read once, with
positioned reads at the offsets in the safetensors header, so a host only ever reads the
slices its own devices hold. The reads go a chunk of rows at a time, converted and transposed
on the way, straight into the host buffer that becomes the device array (XLA:CPU adopts it
without a copy; other backends copy it before the next shard is read). Scan-stacked layers
fill their slots of that buffer one layer at a time. Beyond the final arrays, host memory
holds one chunk (about a MiB) on CPU and one shard elsewhere.

Export writes one tensor at a time into safetensors shards (+ `model.safetensors.index.json`),
with config.json, generation_config.json and the tokenizer files, padded vocabulary rows
stripped. The name mapping (`llm.hf.config.source`) serves both directions.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import mmap
import os
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from llm import sharding as sharding_lib
from llm.hf.config import (
    GPT2_ARCHITECTURES,
    HFError,
    Path,
    Source,
    architecture,
    hf_config_json,
    is_classifier,
    layer_split,
    load_config_json,
    model_config_from_hf,
    read_json,
    source,
)
from llm.model import DTYPES, ModelConfig, Transformer

__all__ = ["HFError", "import_hf", "hf_model_config", "export_hf", "check_new_dir"]

SAFETENSORS_DTYPES = {"float32": ("F32", np.float32), "bfloat16": ("BF16", ml_dtypes.bfloat16),
                      "float16": ("F16", np.float16)}
# Buffers some checkpoints carry that the model recomputes.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq", "attn.bias", "attn.masked_bias")

# Safetensors dtype codes the reader converts from.
_FILE_DTYPES = {"F64": np.float64, "F32": np.float32, "BF16": ml_dtypes.bfloat16,
                "F16": np.float16}
_CHUNK_BYTES = 1 << 20  # bytes per read: amortises the call, stays cache-sized
# Rows per transposing copy: a 16-row strip keeps its source lines in L1 while numpy writes
# the transposed columns (about 5x the throughput of one whole-tensor strided copy).
_STRIP = 16


@dataclasses.dataclass(frozen=True)
class _Tensor:
    """Where one tensor's bytes lie: its file, safetensors dtype code, shape, byte range."""

    file: str
    dtype: str
    shape: tuple[int, ...]
    offset: int
    nbytes: int


def _header(path: str) -> dict[str, _Tensor]:
    """The tensors of one safetensors file, from its header (u64 length, then JSON)."""
    with open(path, "rb") as f:
        try:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > os.path.getsize(path) - 8:
                raise ValueError(f"header length {size} runs past the end of the file")
            header = json.loads(f.read(size))
            header.pop("__metadata__", None)
            return {name: _Tensor(path, entry["dtype"], tuple(entry["shape"]),
                                  8 + size + entry["data_offsets"][0],
                                  entry["data_offsets"][1] - entry["data_offsets"][0])
                    for name, entry in header.items()}
        except (struct.error, ValueError, KeyError, TypeError, AttributeError) as e:
            raise HFError(f"{path}: not a safetensors file ({type(e).__name__}: {e})") from e


def _weight_map(index_path: str) -> dict[str, str]:
    """{tensor: shard file} from a safetensors index, or HFError naming the file and key."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(
            isinstance(v, str) for v in weight_map.values()):
        raise HFError(f"{index_path}: expected a 'weight_map' object of tensor name -> shard "
                      "file name")
    return weight_map


class _Checkpoint:
    """Tensor names -> where their bytes lie in the safetensors files of one HF directory."""

    def __init__(self, hf_dir: str):
        self.hf_dir = hf_dir
        index_path = os.path.join(hf_dir, "model.safetensors.index.json")
        single = os.path.join(hf_dir, "model.safetensors")
        if os.path.isfile(index_path):
            weight_map = _weight_map(index_path)
        elif os.path.isfile(single):
            weight_map = dict.fromkeys(_header(single), "model.safetensors")
        else:
            raise HFError(f"{hf_dir}: neither model.safetensors nor "
                          "model.safetensors.index.json")
        for name, file in sorted(weight_map.items()):
            if not os.path.isfile(os.path.join(hf_dir, file)):
                raise HFError(f"{hf_dir}: shard {file!r} listed in the index (for tensor "
                              f"{name!r}) is missing")
        self.files = {name: os.path.join(hf_dir, file) for name, file in weight_map.items()}
        self.tensors: dict[str, _Tensor] = {}
        for file in sorted(set(self.files.values())):
            self.tensors.update(_header(file))
        for name in self.files:
            if name not in self.tensors:
                raise HFError(f"{self.files[name]}: tensor {name!r} listed in the index is "
                              "not in the file")


def _bounds(index: tuple[slice, ...], shape: tuple[int, ...]) -> list[tuple[int, int]]:
    return [s.indices(n)[:2] for s, n in zip(index, shape, strict=True)]


def _bits(x: np.ndarray) -> np.ndarray:
    """The same memory as unsigned integers: numpy copies bfloat16 element by element."""
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _read_into(f: Any, offset: int, out: np.ndarray) -> None:
    """Fill the contiguous `out` with the file's bytes from `offset` (reads may come short)."""
    assert out.flags.c_contiguous
    view = memoryview(out.reshape(-1).view(np.uint8))
    f.seek(offset)
    done = 0
    while done < len(view):
        n = f.readinto(view[done:])
        if not n:
            raise HFError(f"{f.name}: file ends at byte {offset + done} (truncated?)")
        done += n


def _read_rows(f: Any, tensor: _Tensor, rows: tuple[int, int], cols: tuple[int, int],
               out: np.ndarray) -> None:
    """tensor[rows, cols] (a vector is one row) into `out`: one read when rows are whole."""
    itemsize = np.dtype(_FILE_DTYPES[tensor.dtype]).itemsize
    row_bytes = tensor.shape[-1] * itemsize
    if cols == (0, tensor.shape[-1]):
        _read_into(f, tensor.offset + rows[0] * row_bytes, out)
        return
    for k, row in enumerate(range(*rows)):  # a column shard: each row's run on its own
        _read_into(f, tensor.offset + row * row_bytes + cols[0] * itemsize, out[k])


def _fill(ckpt: _Checkpoint, src: Source, layer: int | None, shape: tuple[int, ...],
          index: tuple[slice, ...], out: np.ndarray) -> None:
    """Write our slice `index` of a per-layer parameter of `shape` into `out`, from the file.

    Reads go chunk by chunk straight into `out` (converted and transposed on the way), so
    the only other memory is one chunk.
    """
    tensor = ckpt.tensors[src.name.format(i=layer)]
    want = _bounds(index, shape)
    if src.pad_axis is not None:  # rows beyond the HF vocabulary are zero
        a, b = want[src.pad_axis]
        keep = max(0, min(b, tensor.shape[0]) - a)
        part = [slice(None)] * out.ndim
        part[src.pad_axis] = slice(keep, None)
        out[tuple(part)] = 0
        part[src.pad_axis] = slice(0, keep)
        out = out[tuple(part)]
        want[src.pad_axis] = (a, a + keep)
    if src.columns is not None:
        a, b = want[-1]
        want[-1] = (a + src.columns[0], b + src.columns[0])
    if src.transpose:  # torch Linear [out, in]: walk the file's rows, write our columns
        want, out = want[::-1], out.T
    if len(want) == 1:
        want, out = [(0, 1), *want], out[None]
    (r0, r1), (c0, c1) = want
    if out.size == 0:
        return
    file_dtype = np.dtype(_FILE_DTYPES[tensor.dtype])
    direct = file_dtype == out.dtype and out.flags.c_contiguous
    step = max(1, _CHUNK_BYTES // ((c1 - c0) * file_dtype.itemsize))
    raw = None if direct else np.empty((min(step, r1 - r0), c1 - c0), file_dtype)
    converted = None if direct or file_dtype == out.dtype else np.empty(raw.shape, out.dtype)
    with open(tensor.file, "rb", buffering=0) as f:
        for start in range(r0, r1, step):
            stop = min(start + step, r1)
            dst = out[start - r0:stop - r0]
            if direct:  # same dtype, our rows contiguous: the read lands in place
                _read_rows(f, tensor, (start, stop), (c0, c1), dst)
                continue
            chunk = raw[:stop - start]
            _read_rows(f, tensor, (start, stop), (c0, c1), chunk)
            if converted is not None:
                np.copyto(converted[:stop - start], chunk, casting="unsafe")
                chunk = converted[:stop - start]
            if src.transpose:
                for k in range(0, stop - start, _STRIP):
                    _bits(dst[k:k + _STRIP])[...] = _bits(chunk[k:k + _STRIP])
            else:
                np.copyto(dst, chunk, casting="unsafe")


def _fill_layers(ckpt: _Checkpoint, src: Source, shape: tuple[int, ...],
                 index: tuple[slice, ...], out: np.ndarray) -> None:
    """`_fill` for a scan-stacked parameter: each layer of the shard fills its own slot."""
    start = index[0].start or 0
    for k in range(out.shape[0]):
        _fill(ckpt, src, start + k, shape, index[1:], out[k])


def _expected_hf_shape(src: Source, shape: tuple[int, ...], vocab: int) -> tuple[int, ...]:
    """The HF tensor shape implied by our per-layer `shape` (vocab unpadded, fused widths)."""
    hf = list(shape)
    if src.pad_axis is not None:
        hf[src.pad_axis] = vocab
    if src.columns is not None:
        hf[-1] = None  # a fused tensor: checked by the column range below
    return tuple(hf[::-1] if src.transpose else hf)


def _check_tensor(ckpt: _Checkpoint, src: Source, name: str, shape: tuple[int, ...],
                  vocab: int) -> None:
    """HFError unless tensor `name` exists with a readable dtype and the expected shape."""
    if name not in ckpt.tensors:
        raise HFError(f"{ckpt.hf_dir}: missing tensor {name!r}")
    tensor = ckpt.tensors[name]
    if tensor.dtype not in _FILE_DTYPES:
        raise HFError(f"{tensor.file}: tensor {name!r} has dtype {tensor.dtype}, expected one "
                      f"of {sorted(_FILE_DTYPES)}")
    found = tensor.shape
    want = _expected_hf_shape(src, shape, vocab)
    ok = len(found) == len(want) and all(w is None or w == n for w, n in zip(want, found,
                                                                         strict=False))
    if src.columns is not None and ok:
        ok = found[-1] >= src.columns[1]
    if not ok:
        raise HFError(f"{tensor.file}: tensor {name!r} has shape {list(found)}, "
                      f"expected {[('?' if w is None else w) for w in want]}")
    if tensor.nbytes != math.prod(found) * np.dtype(_FILE_DTYPES[tensor.dtype]).itemsize:
        raise HFError(f"{tensor.file}: tensor {name!r} holds {tensor.nbytes} bytes, not what "
                      f"shape {list(found)} in {tensor.dtype} needs")


def _host_buffer(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised host array on fresh pages, which XLA:CPU adopts without a copy.

    Anonymous memory mapped with MAP_POPULATE (Linux): the kernel faults it in in one go,
    and numpy's transparent-huge-page advice for large arrays, which stalled the 1b float32
    import for seconds in memory compaction, is never given. A mapping is page-aligned,
    beyond the 64 bytes XLA needs to adopt a buffer.
    """
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0)
    pages = mmap.mmap(-1, max(nbytes, 1), flags=flags)
    return np.frombuffer(pages, np.uint8, count=nbytes).view(dtype).reshape(shape)


def _place(shape: tuple[int, ...], dtype: Any, sharding: jax.sharding.Sharding,
           fill: Callable[[tuple[slice, ...], np.ndarray], None]) -> jax.Array:
    """A global array whose local shards are filled one at a time (replicas filled once).

    On CPU the aligned host buffer becomes the device buffer (no copy); elsewhere the copy
    finishes before the next shard is read, so the host holds one shard at a time.
    """
    by_key: dict[tuple, list[tuple[jax.Device, tuple[slice, ...]]]] = {}
    for device, index in sharding.addressable_devices_indices_map(shape).items():
        by_key.setdefault(tuple(_bounds(index, shape)), []).append((device, index))
    arrays = []
    for bounds, pairs in by_key.items():
        host = _host_buffer(tuple(b - a for a, b in bounds), dtype)
        fill(pairs[0][1], host)
        placed = [jax.device_put(host, device) for device, _ in pairs]
        jax.block_until_ready(placed)
        arrays.extend(placed)
        del host
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _read_config(hf_dir: str, dtype: str, scan_layers: bool
                 ) -> tuple[ModelConfig, dict[str, Any], _Checkpoint]:
    """(ModelConfig, config.json's values, where the tensors lie) of a HF directory."""
    values = load_config_json(hf_dir)
    ckpt = _Checkpoint(hf_dir)
    has_head = "lm_head.weight" in ckpt.tensors
    tied = values.get("tie_word_embeddings")
    tied = (not has_head) if tied is None or is_classifier(values) else bool(tied)
    cfg = model_config_from_hf(values, os.path.join(hf_dir, "config.json"), tied, dtype,
                               scan_layers)
    return cfg, values, ckpt


def hf_model_config(hf_dir: str) -> ModelConfig:
    """The ModelConfig a HF directory imports as (config.json and tensor names; no weights)."""
    return _read_config(hf_dir, "float32", True)[0]


def import_hf(hf_dir: str, mesh: jax.sharding.Mesh | None = None, dtype: str | None = None,
              scan_layers: bool = True, rules: Mapping[str, Any] | None = None,
              build: Callable[[Transformer], nnx.Module] | None = None
              ) -> tuple[ModelConfig, nnx.GraphDef, nnx.State, str | None]:
    """Load a HF model directory: (ModelConfig, graphdef, params, tokenizer dir or None).

    Parameters are born sharded on `mesh` (default: the first device) following the logical
    rules; `dtype` sets the parameter and compute dtype (default float32). `build` adds the
    heads the checkpoint holds beyond the trunk (a `*ForSequenceClassification`'s score
    head); such a checkpoint has no LM head, so the embeddings stand in for it (tied).
    """
    if dtype is not None and dtype not in DTYPES:
        raise HFError(f"import: dtype={dtype!r}; expected one of {sorted(DTYPES)}")
    cfg, values, ckpt = _read_config(hf_dir, dtype or "float32", scan_layers)
    config_path = os.path.join(hf_dir, "config.json")
    prefix = ""
    if architecture(values, config_path) in GPT2_ARCHITECTURES and any(
            n.startswith("transformer.") for n in ckpt.tensors):
        prefix = "transformer."
    if is_classifier(values) and build is None:
        raise HFError(f"{config_path}: architectures={values['architectures']} is a reward "
                      "model (a score head, no LM head); load it as one (llm.scoring, "
                      "scripts/score.py)")

    mesh = mesh or sharding_lib.make_mesh(devices=jax.devices()[:1])
    abstract = nnx.eval_shape(lambda: (build or (lambda m: m))(Transformer(cfg, nnx.Rngs(0))))
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
            _check_tensor(ckpt, src, name, per_layer_shape, cfg.vocab_size)
            used.add(name)
        plan.append((path, var, src, stacked, per_layer_shape, layer))
    unused = sorted(n for n in ckpt.tensors if n not in used and not n.endswith(
        _IGNORED_SUFFIXES) and not (n == "lm_head.weight" and cfg.tie_embeddings))
    if unused:
        raise HFError(f"{hf_dir}: tensors {unused[:5]} have no place in the model "
                      f"({len(unused)} unused)")

    np_dtype = np.dtype(cfg.weight_dtype)
    values_out = {}
    for path, var, src, stacked, per_layer_shape, layer in plan:
        fill = (functools.partial(_fill_layers, ckpt, src, per_layer_shape) if stacked
                else functools.partial(_fill, ckpt, src, layer, per_layer_shape))
        values_out[path] = _place(tuple(var.shape), np_dtype,
                                  flat_shardings[path].get_value(), fill)
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
    values = read_json(path)
    if not isinstance(values, dict):
        raise HFError(f"{path}: expected a JSON object, got {type(values).__name__}")
    return {k: values[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if k in values}


def _our_token_ids(tokenizer_dir: str | None) -> dict[str, Any]:
    """bos/eos/pad ids of a tokenizer trained here (its llm_tokenizer.json)."""
    from llm.data.tokenizer import trained_here

    values = trained_here(tokenizer_dir) if tokenizer_dir else None
    return {f"{k}_token_id": values[f"{k}_id"] for k in ("bos", "eos", "pad")
            if values and isinstance(values.get(f"{k}_id"), int) and values[f"{k}_id"] >= 0}


def _write_tokenizer(tokenizer_dir: str, out_dir: str) -> None:
    """A Hugging Face tokenizer's files byte for byte (a data.chat_template override as
    chat_template.jinja, which transformers prefers); a tokenizer trained here as files
    transformers reads, its role-token layout as a Jinja template (same ids both ways)."""
    from llm.data.tokenizer import HF_FILES, SPM_FILE, template_override, trained_here
    from llm.hf.tokenizer_export import ROLE_TOKENS_TEMPLATE, write_hf_tokenizer

    ours = trained_here(tokenizer_dir)
    override = template_override(tokenizer_dir)
    if ours is not None:
        write_hf_tokenizer(os.path.join(tokenizer_dir, SPM_FILE), out_dir,
                           bos_id=ours["bos_id"], eos_id=ours["eos_id"], pad_id=ours["pad_id"],
                           unk_id=ours["unk_id"], chat_template=override or ROLE_TOKENS_TEMPLATE)
        return
    for name in HF_FILES:
        if os.path.isfile(os.path.join(tokenizer_dir, name)):
            shutil.copyfile(os.path.join(tokenizer_dir, name), os.path.join(out_dir, name))
    if override:
        with open(os.path.join(out_dir, "chat_template.jinja"), "w", encoding="utf-8") as f:
            f.write(override)


def export_hf(model_cfg: ModelConfig, params: Any, out_dir: str, dtype: str = "bfloat16",
              tokenizer_dir: str | None = None, shard_size_bytes: int = 2 * 1024**3) -> None:
    """Write a new directory transformers loads: config, shards + index, tokenizer files.

    `out_dir` must not exist or be empty: files are written into a temporary sibling that
    is renamed to `out_dir` at the end, so a failed export leaves nothing that looks whole.
    """
    if dtype not in SAFETENSORS_DTYPES:
        raise HFError(f"export: dtype={dtype!r}; expected one of {sorted(SAFETENSORS_DTYPES)}")
    check_new_dir(out_dir)
    flat = _flat_params(params)
    token_ids = {**_our_token_ids(tokenizer_dir), **_token_ids(tokenizer_dir)}
    classifier = ("score_head", "kernel") in flat
    if classifier:  # a reward model: the score head replaces the LM head
        flat.pop(("lm_head", "kernel"), None)
    config = hf_config_json(model_cfg, dtype, token_ids, classifier)
    plan = _export_plan(model_cfg, flat, SAFETENSORS_DTYPES[dtype][1])
    if jax.process_index() != 0:  # every process joins the gathers, one writes
        for _, _, build in plan:
            build()
        return
    out_dir = os.path.abspath(out_dir)
    os.makedirs(os.path.dirname(out_dir), exist_ok=True)
    # mkdir, not mkdtemp: the export keeps the umask's permissions, not 0700
    tmp = os.path.join(os.path.dirname(out_dir),
                       f".{os.path.basename(out_dir)}.partial-{uuid.uuid4().hex[:12]}")
    os.mkdir(tmp)
    try:
        _write_export(tmp, plan, config, dtype, tokenizer_dir, shard_size_bytes)
        check_new_dir(out_dir)  # another writer may have filled it meanwhile
        os.replace(tmp, out_dir)  # POSIX: replaces a missing or empty directory only
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_new_dir(path: str) -> None:
    """HFError unless `path` is missing or an empty directory (an export never mixes)."""
    if not os.path.exists(path):
        return
    if not os.path.isdir(path):
        raise HFError(f"{path}: exists and is not a directory; export writes a new directory")
    if os.listdir(path):
        raise HFError(f"{path}: directory is not empty; export writes a new directory "
                      "(choose another path)")


def _write_export(out_dir: str, plan: list, config: dict[str, Any], dtype: str,
                  tokenizer_dir: str | None, shard_size_bytes: int) -> None:
    """The files of an export (shards, index, tokenizer, configs) into an empty `out_dir`."""
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
        _write_tokenizer(tokenizer_dir, out_dir)
    if not os.path.isfile(os.path.join(out_dir, "generation_config.json")):
        _write_json(os.path.join(out_dir, "generation_config.json"),
                    {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id")
                     if config.get(k) is not None})
    _write_json(os.path.join(out_dir, "config.json"), config)


def _write_json(path: str, value: Any) -> None:
    with open(path, "w") as f:
        json.dump(value, f, indent=2, sort_keys=True)
        f.write("\n")
