"""What every command shares: its parser, the `--config.KEY=VALUE` overrides, the runtime
start-up."""
from __future__ import annotations

import argparse
import logging

from bertjax.errors import UserError


def parser(prog: str, description: str) -> argparse.ArgumentParser:
  return argparse.ArgumentParser(prog=prog, description=description,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)


def split_overrides(rest: list[str], command: str) -> list[str]:
  """The arguments argparse left over -> the `--config.KEY=VALUE` overrides, in order. Anything
  else is a one-line UserError: a stray flag, or an override written as `--config.KEY VALUE`.
  (config.apply_overrides then checks each key and value.)"""
  overrides = []
  for i, arg in enumerate(rest):
    if arg.startswith("--config."):
      if "=" not in arg:
        raise UserError(f"{arg}: write overrides as {arg}=VALUE")
      overrides.append(arg)
    elif overrides and not arg.startswith("--"):
      raise UserError(f"{arg!r}: write overrides as --config.KEY=VALUE")
    else:
      raise UserError(f"unknown flag {arg!r}; overrides are --config.KEY=VALUE "
                      f"(see bertjax {command} --help)")
  return overrides


def start_runtime(args) -> None:
  """Before the first JAX device is touched: the multi-host runtime (from args' --coordinator
  / --num-processes / --process-id flags, the environment or the cluster), Abseil's notices
  off, and on CPU the allocator setting that keeps freed pages (XLA:CPU mallocs each step's
  temporaries; keeping them avoids ~140k page faults a step: 1.28x faster BERT-mini step, same
  peak RSS, benchmarks/results.md ablation)."""
  from bertjax import distributed
  from bertjax.hostmem import cpu_only, keep_freed_memory
  if cpu_only():      # before XLA's threads start (see hostmem.cpu_only)
    keep_freed_memory()
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)
  logging.getLogger("absl").setLevel(logging.WARNING)
  import jax
  if jax.default_backend() == "cpu":
    keep_freed_memory()
