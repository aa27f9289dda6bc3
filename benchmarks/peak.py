"""The machine's matmul peak, measured with XLA in this process: the denominator of MFU.

Three precisions, each the best (fastest) of a few repeats over a few shapes:
  float32     f32 x f32 -> f32
  bfloat16    bf16 x bf16 -> f32 (`preferred_element_type=f32`: what the model's matmuls do;
              on CPUs with AMX this is the fast path)
  bf16_out    bf16 x bf16 -> bf16 (for reference: on XLA:CPU this is *not* the fast path)
The shapes are the model's own (tokens x hidden x FFN) plus a square one, so the peak is what
the step's matmuls could reach, not a number from a data sheet.

Run alone: `python -m benchmarks.peak` (prints JSON).
"""
from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp

# (M, K, N): square, the FFN matmuls of L4/H256 and BERT-base at B*S = 4096 tokens.
SHAPES = [(2048, 2048, 2048), (4096, 256, 1024), (4096, 1024, 256), (4096, 768, 3072),
          (4096, 3072, 768)]
PRECISIONS = {
    "float32": (jnp.float32, jnp.float32),
    "bfloat16": (jnp.bfloat16, jnp.float32),
    "bf16_out": (jnp.bfloat16, jnp.bfloat16),
}


def _time_matmul(m: int, k: int, n: int, in_dtype, out_dtype, repeats: int) -> float:
  """Best wall time of one [M, K] x [K, N] matmul (seconds), after a warm-up call."""
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.float32).astype(in_dtype)
  b = jax.random.normal(jax.random.key(1), (k, n), jnp.float32).astype(in_dtype)
  f = jax.jit(lambda a, b: jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())),
                                               preferred_element_type=out_dtype))
  f(a, b).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, b).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return best


def measure(precision: str, repeats: int = 5, shapes=SHAPES) -> dict:
  """{"gflops": best GFLOP/s over shapes, "shape": the best shape, "per_shape": {...}}."""
  in_dtype, out_dtype = PRECISIONS[precision]
  per_shape = {}
  for m, k, n in shapes:
    t = _time_matmul(m, k, n, in_dtype, out_dtype, repeats)
    per_shape[f"{m}x{k}x{n}"] = 2 * m * k * n / t / 1e9
  best = max(per_shape, key=per_shape.get)
  return {"precision": precision, "gflops": per_shape[best], "shape": best,
          "per_shape": per_shape}


def measure_all(repeats: int = 5) -> dict:
  # bf16 -> bf16 is for reference only: two shapes are enough to show it is not the fast path.
  return {p: measure(p, repeats, SHAPES if p != "bf16_out" else SHAPES[:2]) for p in PRECISIONS}


if __name__ == "__main__":
  print(json.dumps(measure_all()))  # one line: bench_train reads the last line
