"""Keep freed host memory for reuse: a CPU-backend speed-up for training steps.

XLA:CPU allocates a step's temporaries (hundreds of MB) with malloc on every execution. glibc
serves blocks above 32 MB with fresh mmap()s and unmaps them on free, so each step first-touches
every page again: ~250k page faults per BERT-mini step (4 KiB each), a large share of the step.
`keep_freed_memory()` tells glibc to serve everything from its heap and never give it back, so
steps reuse the same pages. Effect measured in benchmarks/bench_train.py (ablation table).

Cost: resident memory never shrinks, and settles at a few times the step's temp buffer after
the first steps (BERT-mini: ~2.8 GB instead of ~1.2 GB; the benchmark reports peak RSS both
ways). No-op outside glibc/Linux; call it once, early, in a process that trains on CPU.
"""
from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_applied = False


def keep_freed_memory() -> bool:
  """Configure glibc malloc (no mmap'd blocks, no trimming, one arena). True if applied."""
  global _applied
  if _applied:
    return True
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
    return False
  ok = (mallopt(_M_MMAP_MAX, 0) == 1
        and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
        # One arena: XLA's worker threads free blocks that the main thread's heap then reuses.
        and mallopt(_M_ARENA_MAX, 1) == 1)
  _applied = ok
  return ok
