"""Mesh from config, logical-axis rules, sharding helpers and multi-host start-up.

Parameters carry logical axis names (`axes` metadata, see `llm/model.py`); `config.mesh.rules`
maps each name to a mesh axis (`data`, `fsdp`, `tensor`) or to nothing (replicated). Meshes
use `AxisType.Auto`: the compiler propagates shardings from the annotated parameters and
batch, which keeps model code free of per-op sharding annotations (Explicit axes would
require an `out_sharding` on every einsum).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical name -> mesh axis. FSDP shards the embedding dimension of every weight; tensor
# parallelism splits heads, kv heads, the MLP width and the vocabulary.
DEFAULT_RULES: dict[str, str | None] = {
    "batch": "data",
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv": "tensor",
    "norm": None,
    "layers": None,
    "prefix": None,
    "seq": None,
}


class MeshConfigError(ValueError):
    """A mesh shape or rule that cannot be built on the available devices."""


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
    """Fill in the one -1 axis and check the product equals the device count."""
    unknown = [k for k in shape if k not in MESH_AXES]
    if unknown:
        raise MeshConfigError(f"mesh.shape: unknown axes {unknown}; expected {MESH_AXES}")
    sizes = {axis: int(shape.get(axis, 1)) for axis in MESH_AXES}
    free = [axis for axis, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise MeshConfigError(f"mesh.shape: only one axis may be -1, got {free}")
    bad = [axis for axis, size in sizes.items() if size == 0 or size < -1]
    if bad:
        raise MeshConfigError(f"mesh.shape.{bad[0]}={sizes[bad[0]]}: expected a size >= 1 or -1")
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if free:
        if num_devices % fixed:
            raise MeshConfigError(
                f"mesh.shape={dict(shape)}: {num_devices} devices are not divisible by {fixed}")
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes.values()) != num_devices:
        raise MeshConfigError(
            f"mesh.shape={dict(shape)} needs {math.prod(sizes.values())} devices, "
            f"but {num_devices} are available")
    return sizes


def make_mesh(shape: Mapping[str, int] | None = None,
              devices: Sequence[jax.Device] | None = None) -> jax.sharding.Mesh:
    """A (data, fsdp, tensor) mesh with Auto axis types over `devices` (default: all)."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = resolve_mesh_shape(shape or {"data": -1}, len(devices))
    axis_shape = tuple(sizes[a] for a in MESH_AXES)
    types = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(axis_shape, MESH_AXES, axis_types=types)
    return jax.sharding.Mesh(np.array(devices).reshape(axis_shape), MESH_AXES,
                             axis_types=types)


def logical_to_spec(axes: Sequence[str | None], rules: Mapping[str, Any],
                    mesh: jax.sharding.Mesh, shape: Sequence[int] | None = None
                    ) -> PartitionSpec:
    """Map logical names to a PartitionSpec; an axis is used once and must divide the dim."""
    used: set[str] = set()
    spec = []
    for i, name in enumerate(axes):
        target = rules.get(name) if name is not None else None
        targets = (target,) if isinstance(target, str) else tuple(target or ())
        targets = tuple(t for t in targets if t not in used and mesh.shape.get(t, 1) > 1)
        if shape is not None and targets:
            size = math.prod(mesh.shape[t] for t in targets)
            if shape[i] % size:
                targets = ()  # replicate a dim the mesh does not divide (e.g. 2 KV heads on 4)
        used.update(targets)
        spec.append(targets[0] if len(targets) == 1 else (targets or None))
    return PartitionSpec(*spec)


def _leaf_axes(variable: nnx.Variable) -> tuple[str | None, ...]:
    axes = tuple(variable.get_metadata().get("axes", ()))
    extra = variable.shape.__len__() - len(axes)  # scan-stacked layers lead with 'layers'
    return ("layers",) * extra + axes if extra > 0 else axes


def state_shardings(state: Any, mesh: jax.sharding.Mesh,
                    rules: Mapping[str, Any] | None = None) -> Any:
    """NamedShardings for an nnx.State (abstract or concrete) from its `axes` metadata."""
    rules = dict(DEFAULT_RULES if rules is None else rules)

    def one(variable):
        if isinstance(variable, nnx.Variable):
            spec = logical_to_spec(_leaf_axes(variable), rules, mesh, variable.shape)
            return variable.replace(NamedSharding(mesh, spec))
        return NamedSharding(mesh, PartitionSpec())

    return jax.tree.map(one, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """A fully replicated sharding on `mesh`."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh, ndim: int = 2) -> NamedSharding:
    """Shard the leading (batch) dimension over data and fsdp; the rest replicated."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def batch_divisor(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def rows_sharding(mesh: jax.sharding.Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """The batch sharding for an array of rows, or replicated when its rows do not divide."""
    if shape and shape[0] % batch_divisor(mesh) == 0:
        return batch_sharding(mesh, len(shape))
    return replicated(mesh)


def place_batch(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
    """Turn this process's share of a batch into global arrays sharded over the batch axes."""
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.dtype.kind in "OUS":  # strings (answers, ids) stay on the host
            continue
        out[key] = jax.make_array_from_process_local_data(batch_sharding(mesh, value.ndim),
                                                          value)
    return out


def maybe_initialize_distributed() -> None:
    """Call jax.distributed.initialize() when started as one of several processes.

    Detected from JAX's own variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
    JAX_PROCESS_ID), SLURM or a TPU pod; a single plain process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if os.environ.get("JAX_COORDINATOR_ADDRESS"):
        if os.environ.get("JAX_PLATFORMS", "") == "cpu":
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=os.environ["JAX_COORDINATOR_ADDRESS"],
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or os.environ.get("TPU_WORKER_HOSTNAMES"):
        jax.distributed.initialize()


def shard_state(state: Any, mesh: jax.sharding.Mesh,
                rules: Mapping[str, Any] | None = None) -> Any:
    """Place an existing nnx.State onto `mesh` following its logical axes."""
    return jax.device_put(state, state_shardings(state, mesh, rules))


def init_sharded(create: Any, mesh: jax.sharding.Mesh,
                 rules: Mapping[str, Any] | None = None) -> tuple[nnx.GraphDef, Any]:
    """Build `create()` (an nnx.Module factory) with every weight born sharded.

    The module is traced abstractly first to get shapes and logical axes, then the real
    initialiser runs under jit with `out_shardings`, so no host ever holds the full model.
    """
    abstract = nnx.eval_shape(create)
    graphdef, abstract_state = nnx.split(abstract)
    shardings = state_shardings(abstract_state, mesh, rules)

    def init():
        return nnx.split(create())[1]

    return graphdef, jax.jit(init, out_shardings=shardings)()
