"""Segment pairs for NSP, following google-research/bert's create_instances_from_document.

Per epoch, every document (piece) is cut into chunks exactly as BERT does: sentences are
accumulated until they reach the target length (max_seq_length - 3, or with probability
short_seq_prob a random length in [2, max]), a random split point makes segment A, and then
  IsNext  (50%): B = the rest of the chunk (the actual next sentences), or
  NotNext (50%, and always for a one-sentence chunk): B = sentences from a random start in a
          random *other* document, and the unused sentences of the chunk go back to be reused.
The pair is truncated to max_seq_length - 3 by removing tokens from the longer segment, from
the front or the back at random. Differences from the original: (1) the short target length is
drawn per chunk (BERT drew it once per document); (2) labels are balanced: every two NotNext forced
by one-sentence chunks turn the next coin-flipped NotNext of a longer chunk into IsNext (BERT's
forced ones pushed NotNext to ~52% on prose); (3) a NotNext document is drawn uniformly among the
other documents, then a piece of it when it is stored in pieces. Chunks are shuffled across the
whole epoch, as BERT shuffled its offline instances.

`plan_epoch` needs only sentence lengths (the index); tokens are read when a batch is built.
Randomness: plan draws hash (seed, epoch, piece, chunk); example draws hash (seed, epoch, index).
"""
from __future__ import annotations

import bisect

import numpy as np

from bertjax.data import rng

# stream tags so independent decisions use independent hashes
_S_TARGET, _S_SHORT, _S_SPLIT, _S_NEXT, _S_DOC, _S_START, _S_TRUNC_A, _S_TRUNC_B = range(1, 9)


class Plan:
  """One epoch's chunks in training order: arrays of length n (the epoch's example count)."""

  def __init__(self, piece, start, a_end, end, target, random_next):
    self.piece = piece              # [n] int32 piece holding the chunk
    self.start = start              # [n] int32 first sentence (within the piece)
    self.a_end = a_end              # [n] int32 sentences [start, a_end) are segment A
    self.end = end                  # [n] int32 IsNext: B = [a_end, end)
    self.target = target            # [n] int32 target length (tokens, without specials)
    self.random_next = random_next  # [n] bool NotNext

  def __len__(self):
    return len(self.piece)


def plan_epoch(sent_lens: np.ndarray, piece_offsets: np.ndarray, *, seed: int, epoch: int,
               max_num_tokens: int, short_seq_prob: float) -> Plan:
  """Chunk every piece (BERT's loop, driven by sentence lengths only) and shuffle the chunks."""
  cols = [[] for _ in range(6)]
  debt = 0
  for p in range(len(piece_offsets) - 1):
    lens = sent_lens[piece_offsets[p]:piece_offsets[p + 1]]
    n = len(lens)
    cum = [0] + np.cumsum(lens, dtype=np.int64).tolist()   # cum[i] = tokens before sentence i
    i, c = 0, 0
    while i < n:
      target = max_num_tokens
      if rng.uniform(seed, epoch, p, c, _S_SHORT) < short_seq_prob:
        target = rng.randint(2, max_num_tokens, seed, epoch, p, c, _S_TARGET)
      # smallest end with tokens(i..end) >= target, else the end of the piece
      end = min(max(bisect.bisect_left(cum, cum[i] + target), i + 1), n)
      m = end - i
      a_end = i + 1 if m < 2 else i + rng.randint(1, m - 1, seed, epoch, p, c, _S_SPLIT)
      random_next = m == 1 or rng.uniform(seed, epoch, p, c, _S_NEXT) < 0.5
      if m == 1:
        debt += 1            # two forced NotNext ...
      elif random_next and debt >= 2:
        random_next = False  # ... turn one coin-flipped NotNext into IsNext: labels stay 50/50
        debt -= 2
      for col, v in zip(cols, (p, i, a_end, end, target, random_next)):
        col.append(v)
      i = a_end if random_next else end   # NotNext: the unused sentences go back
      c += 1
  n = len(cols[0])
  order = np.random.default_rng([seed, epoch, 0x5EED]).permutation(n)
  arrs = [np.asarray(col, np.int32)[order] for col in cols[:5]]
  return Plan(*arrs, np.asarray(cols[5], bool)[order])


def truncated_lengths(la: int, lb: int, max_num_tokens: int) -> tuple[int, int]:
  """Lengths after BERT's truncate_seq_pair: repeatedly drop a token from the longer segment
  (B on ties) until la + lb <= max_num_tokens (closed form of that loop)."""
  excess = la + lb - max_num_tokens
  if excess <= 0:
    return la, lb
  d = abs(la - lb)
  if excess <= d:
    return (la - excess, lb) if la > lb else (la, lb - excess)
  rest = excess - d
  lo = min(la, lb)
  return lo - rest // 2, lo - (rest + 1) // 2
