"""Counter-based randomness: every draw is a hash of (seed, epoch, example index, stream, ...).

No generator state exists, so an example's pairs and masks are the same whichever process,
worker or batch computes it; resuming needs only the example index.
SplitMix64 finaliser (Steele et al. 2014) on Python ints for scalars, on uint64 arrays in bulk.
"""
from __future__ import annotations

import numpy as np

_M64 = (1 << 64) - 1
_G = 0x9E3779B97F4A7C15


def mix(*xs: int) -> int:
  """Hash a tuple of non-negative ints to 64 bits."""
  h = 0x243F6A8885A308D3
  for x in xs:
    z = (h ^ (int(x) & _M64)) + _G & _M64
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 & _M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB & _M64
    h = z ^ (z >> 31)
  return h


def uniform(*xs: int) -> float:
  """A float in [0, 1) from the hash of xs."""
  return (mix(*xs) >> 11) * (1.0 / (1 << 53))


def randint(lo: int, hi: int, *xs: int) -> int:
  """An int in [lo, hi] (inclusive, like random.randint) from the hash of xs."""
  lo, hi = int(lo), int(hi)
  return lo + (mix(*xs) % (hi - lo + 1))


def coin_flips(n: int, *xs: int) -> int:
  """How many of n fair coin flips come up heads (popcount of n hashed bits)."""
  heads, k = 0, 0
  while n > 0:
    take = min(n, 64)
    heads += (mix(*xs, k) & ((1 << take) - 1)).bit_count()
    n -= take
    k += 1
  return heads


def _splitmix(z: np.ndarray) -> np.ndarray:
  z = z + np.uint64(_G)
  z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
  z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
  return z ^ (z >> np.uint64(31))


def uniform_grid(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
  """[len(keys), n] floats in [0, 1): draw j of row i hashes (keys[i], stream, j)."""
  k = np.asarray(keys, np.uint64)[:, None]                                    # [B, 1]
  j = np.arange(n, dtype=np.uint64)[None, :]                                  # [1, n]
  with np.errstate(over="ignore"):
    z = _splitmix(k ^ _splitmix(j * np.uint64(0x100000001B3) + np.uint64(stream)))  # [B, n]
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))
