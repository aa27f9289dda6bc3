"""Named accelerator targets for ahead-of-time compiles: the chip (HBM, peak bf16 FLOP/s) and
the slice's topology, as libtpu describes it.

`bertjax compile --target v5e-256` asks libtpu (`jax.experimental.topologies`) for the devices of
that slice without owning one: the TPU compiler then lowers, partitions and schedules the real
train step for them, and reports its memory and FLOPs. Topology names, host bounds and wrap-around
follow Google's slice shapes (the same table maxtext's train_compile.py uses): v4 and v5p run in
megacore mode, one JAX device per chip; v5e has one TensorCore per chip.

Peaks are the vendors' dense bf16 figures per chip (no sparsity); HBM is per chip, as sold.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

from bertjax.errors import UserError

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str
  hbm_bytes: int            # memory of one JAX device (one chip)
  peak_flops: float         # dense bf16 FLOP/s of one JAX device


@dataclasses.dataclass(frozen=True)
class Target:
  name: str
  chip: Chip
  platform: str             # "tpu" (libtpu topology) or "cuda" (CUDA plugin, device-less)
  num_devices: int
  topology: str = ""        # libtpu topology name, e.g. "v5e:16x16"
  chip_config: str = "default"  # "megacore" for v4 / v5p (2 TensorCores = 1 device)
  host_bounds: tuple = (2, 2, 1)  # chips per host in each dimension
  wrap: tuple = (False, False, False)  # torus wrap-around per dimension
  description: str = ""


CHIPS = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12),
    "v5e": Chip("TPU v5e", 16 * GiB, 197e12),
    "v5p": Chip("TPU v5p", 95 * GiB, 459e12),
    "h100": Chip("H100 SXM", 80 * GiB, 989e12),
}

_TORUS = (True, True, True)
TARGETS = {t.name: t for t in [
    Target("v4-8", CHIPS["v4"], "tpu", 4, "v4:2x2x1", "megacore",
           description="1 host, 4 chips (2x2x1)"),
    Target("v4-32", CHIPS["v4"], "tpu", 16, "v4:2x2x4", "megacore",
           description="4 hosts, 16 chips (2x2x4)"),
    Target("v5e-8", CHIPS["v5e"], "tpu", 8, "v5e:2x4", host_bounds=(2, 4, 1),
           description="1 host, 8 chips (2x4)"),
    Target("v5e-32", CHIPS["v5e"], "tpu", 32, "v5e:4x8",
           description="8 hosts, 32 chips (4x8)"),
    Target("v5e-256", CHIPS["v5e"], "tpu", 256, "v5e:16x16", wrap=(True, True, False),
           description="64 hosts, 256 chips (16x16 torus)"),
    Target("v5p-128", CHIPS["v5p"], "tpu", 64, "v5:4x4x4", "megacore", wrap=_TORUS,
           description="16 hosts, 64 chips (4x4x4 torus)"),
    Target("h100x8", CHIPS["h100"], "cuda", 8, description="1 host, 8 GPUs (NVLink)"),
]}


def get(name: str) -> Target:
  if name not in TARGETS:
    raise UserError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}")
  return TARGETS[name]


def devices(target: Target) -> list:
  """The target's devices, for a Mesh and a compile; no accelerator needed for TPU targets."""
  if target.platform == "tpu":
    try:
      import libtpu  # noqa: F401  (the TPU compiler; pip install 'libtpu==0.0.42.*')
    except ImportError:
      raise UserError(f"target {target.name} needs libtpu to compile: pip install "
                      f"'libtpu==0.0.42.*' (the version jax[tpu]==0.10.2 pins)") from None
    from jax.experimental import topologies
    desc = topologies.get_topology_desc(
        platform="tpu", topology_name=target.topology, chip_config_name=target.chip_config,
        chips_per_host_bounds=target.host_bounds, num_slices=1, wrap=target.wrap)
    return list(desc.devices)
  return _gpu_devices(target)


# The H100 SXM as XLA's GPU compiler sees it (a GpuTargetConfigProto; the numbers are the
# chip's published properties, as in XLA's own gpu specs): with it the CUDA plugin builds a
# device-less topology and compiles for it without a GPU or a CUDA driver.
H100_SXM_SPEC = """
gpu_device_info {
  threads_per_block_limit: 1024  threads_per_warp: 32  shared_memory_per_block: 49152
  shared_memory_per_core: 233472  threads_per_core_limit: 2048  core_count: 132
  fpus_per_core: 128  block_dim_limit_x: 2147483647  block_dim_limit_y: 65535
  block_dim_limit_z: 65535  memory_bandwidth: 3352320000000  l2_cache_size: 52428800
  clock_rate_ghz: 1.98  device_memory_size: 84942979072  shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 }
  registers_per_core_limit: 65536  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 10 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_SPECS = {"h100": H100_SXM_SPEC}


def _gpu_devices(target: Target) -> list:
  """Compile-only GPU devices from the CUDA plugin (jax-cuda12-plugin/-pjrt, no CUDA libraries
  or driver needed) and the chip's target config; one host of `num_devices` GPUs."""
  from jax.experimental import topologies
  try:
    desc = topologies.get_topology_desc(
        platform="cuda", topology=f"1x1x{target.num_devices}",
        target_config=GPU_SPECS[target.name.split("x")[0]])
  except (NotImplementedError, RuntimeError) as e:
    if "not implemented for cuda" in str(e) or "Unknown backend" in str(e):
      raise UserError(f"target {target.name} needs JAX's CUDA plugin to compile: pip install "
                      f"'jax-cuda12-plugin==0.10.2' 'jax-cuda12-pjrt==0.10.2' (the gpu-compile "
                      f"extra; no GPU or CUDA driver needed)") from None
    raise
  return list(desc.devices)
