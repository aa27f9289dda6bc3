"""Multi-host start-up: `jax.distributed.initialize` from flags, environment or the cluster.

Precedence: --coordinator/--num-processes/--process-id flags, then the environment
(BERTJAX_COORDINATOR or JAX_COORDINATOR_ADDRESS, BERTJAX_NUM_PROCESSES or JAX_NUM_PROCESSES,
BERTJAX_PROCESS_ID or JAX_PROCESS_ID), then JAX's own detection where it exists (Cloud TPU pods,
SLURM with more than one task, Open MPI). With none of these, one process (nothing to do).
Must run before anything touches a JAX device. On CPU the cross-process collectives are gloo.
"""
from __future__ import annotations

import argparse
import os
from typing import Optional

import jax

from bertjax.errors import UserError


def add_flags(parser: argparse.ArgumentParser) -> None:
  g = parser.add_argument_group("multi-host (one command per host; default: auto-detect)")
  g.add_argument("--coordinator", default=None,
                 help="host:port of process 0's coordinator service (e.g. 10.0.0.1:1234)")
  g.add_argument("--num-processes", type=int, default=None, help="total number of processes")
  g.add_argument("--process-id", type=int, default=None, help="this process's index, 0-based")


def _env(*names: str) -> Optional[str]:
  for n in names:
    if os.environ.get(n):
      return os.environ[n]
  return None


def _cluster_detected() -> bool:
  """A managed multi-process environment JAX can configure itself from."""
  if int(os.environ.get("SLURM_NTASKS", "1") or 1) > 1 and "SLURM_JOB_ID" in os.environ:
    return True
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", ""):
    return True
  if int(os.environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return True
  return False


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Start JAX's distributed runtime when several processes are configured; True if it did."""
  coordinator = coordinator or _env("BERTJAX_COORDINATOR", "JAX_COORDINATOR_ADDRESS")
  if num_processes is None and _env("BERTJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"):
    num_processes = int(_env("BERTJAX_NUM_PROCESSES", "JAX_NUM_PROCESSES"))
  if process_id is None and _env("BERTJAX_PROCESS_ID", "JAX_PROCESS_ID"):
    process_id = int(_env("BERTJAX_PROCESS_ID", "JAX_PROCESS_ID"))
  if coordinator:
    if num_processes is None or process_id is None:
      raise UserError("--coordinator needs --num-processes and --process-id (or the "
                      "BERTJAX_NUM_PROCESSES / BERTJAX_PROCESS_ID environment variables)")
    if not 0 <= process_id < num_processes:
      raise UserError(f"--process-id={process_id} must be in [0, --num-processes="
                      f"{num_processes})")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id)
    return True
  if num_processes not in (None, 1) or process_id not in (None, 0):
    raise UserError("--num-processes/--process-id given without --coordinator host:port")
  if _cluster_detected():
    jax.distributed.initialize()
    return True
  return False
