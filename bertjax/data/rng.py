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


def mix_array(*cols) -> np.ndarray:
  """Vectorised `mix`: hash columns of ints (arrays broadcast together) to uint64 keys."""
  with np.errstate(over="ignore"):
    h = np.uint64(0x243F6A8885A308D3)
    for c in cols:
      h = _splitmix(h ^ np.asarray(c).astype(np.uint64))
  return np.asarray(h, np.uint64)


def bits_grid(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
  """[len(keys), n] uint64 random words: word j of row i hashes (keys[i], stream, j)."""
  k = np.asarray(keys, np.uint64)[:, None]                                    # [B, 1]
  j = np.arange(n, dtype=np.uint64)[None, :]                                  # [1, n]
  with np.errstate(over="ignore"):
    return _splitmix(k ^ _splitmix(j * np.uint64(0x100000001B3) + np.uint64(stream)))


def uniform_grid(keys: np.ndarray, stream: int, n: int) -> np.ndarray:
  """[len(keys), n] floats in [0, 1): draw j of row i hashes (keys[i], stream, j)."""
  z = bits_grid(keys, stream, n)                                              # [B, n]
  return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def coin_flips_array(n: np.ndarray, keys: np.ndarray, stream: int, max_words: int = 16
                     ) -> np.ndarray:
  """[B] heads among n[i] fair coin flips per row (popcount of n[i] hashed bits; n <= 64*max_words,
  larger n scale the heads of the first 64*max_words)."""
  full_n = np.asarray(n, np.int64)
  n = np.minimum(full_n, 64 * max_words)                                       # [B]
  words = bits_grid(keys, stream, max_words)                                   # [B, W]
  nbits = np.clip(n[:, None] - 64 * np.arange(max_words)[None, :], 0, 64)      # [B, W]
  full = np.uint64(0xFFFFFFFFFFFFFFFF)
  partial = (np.uint64(1) << np.minimum(nbits, 63).astype(np.uint64)) - np.uint64(1)
  mask = np.where(nbits >= 64, full, partial)
  heads = np.bitwise_count(words & mask).sum(1).astype(np.int64)
  return np.where(full_n > n, (heads * full_n) // np.maximum(n, 1), heads)  # clipped: scale up
