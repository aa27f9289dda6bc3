"""Segment pairs for NSP, following google-research/bert's create_instances_from_document.

Per epoch, every document (piece) is cut into chunks exactly as BERT does: sentences are
accumulated until they reach the target length (max_seq_length - 3, or with probability
short_seq_prob a random length in [2, max]), a random split point makes segment A, and then
  IsNext  (50%): B = the rest of the chunk (the actual next sentences), or
  NotNext (50%, and always for a one-sentence chunk): B = sentences from a random start in a
          random *other* document, and the unused sentences of the chunk go back to be reused.
The pair is truncated to max_seq_length - 3 by removing tokens from the longer segment, from
the front or the back at random. Differences from the original:
  (1) the short target length is drawn per chunk (BERT drew it once per document);
  (2) labels are balanced: one-sentence chunks are always NotNext (BERT ended at ~52% NotNext
      on prose), so after chunking that excess of NotNext chunks with >= 2 sentences is
      relabelled IsNext, B being the rest of the chunk (sentences also reused by the next chunk,
      as for any NotNext);
  (3) a NotNext document is drawn uniformly among the other documents, then a piece of it when
      it is stored in pieces.
Chunks are shuffled across the whole epoch, as BERT shuffled its offline instances.

`plan_epoch` needs only sentence lengths (the index); tokens are read when a batch is built.
Randomness: plan draws hash (seed, epoch, piece, chunk number); example draws hash
(seed, epoch, index).
"""
from __future__ import annotations

import numpy as np

from bertjax.data import rng

# stream tags so independent decisions use independent hashes
_S_PLAN, _S_TRUNC_A, _S_TRUNC_B = 1, 7, 8


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
               max_num_tokens: int, short_seq_prob: float,
               sent_offsets: np.ndarray | None = None) -> Plan:
  """Chunk every piece (BERT's loop, driven by sentence lengths only) and shuffle the chunks.

  Vectorised over pieces: step c cuts the c-th chunk of every piece still unfinished.
  sent_offsets: [n_sentences + 1] running token counts (computed when not given).
  """
  if sent_offsets is None:
    sent_offsets = np.concatenate([[0], np.cumsum(sent_lens, dtype=np.int64)])
  off = sent_offsets
  first = np.asarray(piece_offsets[:-1], np.int64)                          # [n_pieces]
  last = np.asarray(piece_offsets[1:], np.int64)
  p = np.flatnonzero(last > first)                                          # active pieces
  i, stop = first[p], last[p]                                               # current sentence
  cols = [[] for _ in range(6)]
  c = 0
  while len(p):
    keys = rng.mix_array(seed, epoch, p, c)                                 # [n]
    u = rng.uniform_grid(keys, _S_PLAN, 4)                                  # [n, 4]
    target = np.where(u[:, 0] < short_seq_prob,
                      2 + (u[:, 1] * (max_num_tokens - 1)).astype(np.int64), max_num_tokens)
    # smallest end with tokens(i..end) >= target, else the end of the piece
    end = np.clip(np.searchsorted(off, off[i] + target, side="left"), i + 1, stop)
    m = end - i
    a_end = np.where(m < 2, i + 1, i + 1 + (u[:, 2] * (m - 1)).astype(np.int64))
    random_next = (m == 1) | (u[:, 3] < 0.5)  # a one-sentence chunk has no next segment
    base = first[p]
    for col, v in zip(cols, (p, i - base, a_end - base, end - base, target, random_next)):
      col.append(v)
    i = np.where(random_next, a_end, end)     # NotNext: the unused sentences go back
    keep = i < stop
    p, i, stop = p[keep], i[keep], stop[keep]
    c += 1
  if not cols[0]:
    return Plan(*(np.zeros(0, np.int32) for _ in range(5)), np.zeros(0, bool))
  arrs = [np.concatenate(col) for col in cols]
  n = len(arrs[0])
  gen = np.random.default_rng([seed, epoch, 0x5EED])
  # Balance NSP: one-sentence chunks are always NotNext, so relabel random NotNext chunks of
  # >= 2 sentences as IsNext (B = the rest of the chunk, the actual next sentences).
  rn = arrs[5]
  excess = int(rn.sum()) - int((~rn).sum())
  if excess > 1:
    can = np.flatnonzero(rn & (arrs[3] - arrs[1] >= 2))
    rn[gen.permutation(can)[:excess // 2]] = False
  order = gen.permutation(n)
  return Plan(*(a[order].astype(np.int32) for a in arrs[:5]), arrs[5][order].astype(bool))


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
