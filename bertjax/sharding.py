"""The device mesh, parameter and batch placement.

One `Mesh` over every device of every process with axes ('data', 'fsdp') (Auto axis types:
the compiler propagates shardings through the step). The batch dimension is split over both
axes; parameters and optimizer state are replicated when fsdp == 1. With fsdp > 1, each
parameter with a dimension divisible by the fsdp size is split along it (the largest such
dimension) -- ZeRO-3 style; XLA inserts the all-gathers and reduce-scatters.

Logical axis rules (maxtext's idea, kept tiny): 'batch' -> ('data', 'fsdp').
"""
from __future__ import annotations

from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from bertjax.errors import UserError

BATCH_AXES = ("data", "fsdp")


def make_mesh(mesh_cfg, devices: Optional[Sequence] = None) -> Mesh:
  """Mesh of shape (data, fsdp); data = -1 takes every remaining device.

  In a single process a mesh smaller than the device count uses the first devices (handy for
  comparisons and benchmarks); across processes it must cover every device.
  """
  devices = list(jax.devices() if devices is None else devices)
  n = len(devices)
  fsdp = mesh_cfg.fsdp
  if fsdp < 1 or n % fsdp and mesh_cfg.data == -1:
    raise UserError(f"mesh.fsdp={fsdp} must be >= 1 and divide the device count {n}")
  data = n // fsdp if mesh_cfg.data == -1 else mesh_cfg.data
  if data * fsdp > n or data < 1:
    raise UserError(f"mesh.data={mesh_cfg.data} x mesh.fsdp={fsdp} needs {data * fsdp} devices; "
                    f"{n} available: set mesh.data=-1 (all) or smaller sizes")
  if data * fsdp < n and jax.process_count() > 1:
    raise UserError(f"mesh.data x mesh.fsdp = {data * fsdp} but {n} devices over "
                    f"{jax.process_count()} processes: a multi-host mesh must use them all "
                    f"(mesh.data=-1)")
  grid = np.asarray(devices[:data * fsdp], dtype=object).reshape(data, fsdp)
  return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto,) * 2)


def mesh_size(mesh: Mesh) -> int:
  return int(np.prod(list(mesh.shape.values())))


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
  """Split dimension `leading` of a batch array over ('data', 'fsdp'); the rest replicated."""
  return NamedSharding(mesh, P(*([None] * leading), BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape, fsdp: int) -> P:
  """Replicated; with fsdp > 1, the largest dimension divisible by fsdp is split over 'fsdp'."""
  if fsdp <= 1 or not shape:
    return P()
  dims = [i for i in np.argsort(shape)[::-1] if shape[i] % fsdp == 0 and shape[i] >= fsdp]
  if not dims:
    return P()
  spec = [None] * len(shape)
  spec[int(dims[0])] = "fsdp"
  return P(*spec)


def state_shardings(mesh: Mesh, abstract_tree):
  """NamedSharding for every leaf of a pytree of arrays / ShapeDtypeStructs."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree_util.tree_map(
      lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), abstract_tree)


def local_batch_size(global_batch: int) -> int:
  """Rows of the global batch this process feeds."""
  return global_batch // jax.process_count()


def pad_rows(batch: dict, rows: int) -> dict:
  """A short batch {name: [n, ...]} -> `rows` rows, the extra ones all zeros (a padding row
  weighs 0 in every metric: its input_mask and label weights are 0). The one way a short
  evaluation or inference batch is brought to its compiled row count."""
  n = next(iter(batch.values())).shape[0]
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)])
          for k, v in batch.items()}


def shard_batch(batch: dict, mesh: Mesh) -> dict:
  """Host numpy local shards [B_local, ...] -> global jax Arrays [B, ...] split over the mesh.

  Each process passes only its own rows; `make_array_from_process_local_data` assembles the
  global array (process p's rows are rows p * B_local ... of the global batch).
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in batch.items():
    v = np.asarray(v)
    global_shape = (v.shape[0] * jax.process_count(),) + v.shape[1:]
    out[k] = jax.make_array_from_process_local_data(sharding, v, global_shape)
  return out
