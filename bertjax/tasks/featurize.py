"""Shared featurizing pieces: sequence packing, word pieces with character spans, the training
example order (batch layouts: bertjax.tasks.batching).

Works with any `bertjax.data.tokenizer.Tokenizer` (encode without special tokens, the special
ids, id_to_token). Numpy only: the arrays become the trainer's batches.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def truncate_pair(a: list[int], b: Optional[list[int]], max_tokens: int) -> None:
  """Drop tokens from the end of the longer sequence until both fit (BERT's rule), in place."""
  while len(a) + (len(b) if b else 0) > max_tokens:
    if b and len(b) > len(a):
      b.pop()
    else:
      a.pop()


def pack(tok, a: list[int], b: Optional[list[int]], max_len: int):
  """[CLS] a [SEP] (b [SEP]) padded to max_len -> (input_ids, segment_ids, input_mask) [S]."""
  a, b = list(a), (list(b) if b is not None else None)
  truncate_pair(a, b, max_len - (3 if b is not None else 2))
  ids = [tok.cls_id] + a + [tok.sep_id]
  seg = [0] * len(ids)
  if b is not None:
    ids += b + [tok.sep_id]
    seg += [1] * (len(b) + 1)
  n = len(ids)
  input_ids = np.full(max_len, tok.pad_id, np.int32)
  input_ids[:n] = ids
  segment_ids = np.zeros(max_len, np.int32)
  segment_ids[:n] = seg
  input_mask = np.zeros(max_len, np.int32)
  input_mask[:n] = 1
  return input_ids, segment_ids, input_mask


def encode_texts(tok, texts: Sequence[str]) -> list[list[int]]:
  return tok.encode_batch(list(texts)) if hasattr(tok, "encode_batch") else \
      [tok.encode(t) for t in texts]


def _piece_text(tok, i: int) -> str:
  t = tok.id_to_token(i)
  return t[2:] if t.startswith("##") else t.lstrip("\u2581")


def word_pieces(tok, words: Sequence[str], starts: Optional[Sequence[int]] = None):
  """Sub-tokenise each word separately (words are given: CoNLL, or whitespace-split SQuAD).

  Returns (ids, word_index, char_start, char_end) per piece. A piece's character span is
  found by laying the pieces' texts along the word when their lengths add up to it (WordPiece
  and SentencePiece on ordinary text), else the whole word (e.g. accents stripped). `starts`
  gives each word's offset in its text (SQuAD); default 0. A word with no pieces (a stray
  control character) becomes [UNK], so every word keeps a first piece.
  """
  ids, widx, cs, ce = [], [], [], []
  for w, (word, pieces) in enumerate(zip(words, encode_texts(tok, words))):
    base = starts[w] if starts is not None else 0
    if not pieces:
      pieces = [tok.unk_id]
    texts = [_piece_text(tok, p) for p in pieces]
    aligned = (tok.unk_id not in pieces and sum(len(t) for t in texts) == len(word))
    pos = 0
    for p, t in zip(pieces, texts):
      ids.append(p)
      widx.append(w)
      if aligned:
        cs.append(base + pos)
        ce.append(base + pos + len(t))
        pos += len(t)
      else:
        cs.append(base)
        ce.append(base + len(word))
  return ids, widx, cs, ce


class BatchIterator:
  """Endless shuffled training batches over in-memory feature arrays, resumable.

  The examples form one stream of epochs, epoch e in the order of a permutation drawn from
  (seed, e); a batch may straddle two epochs, so E epochs of N examples take exactly
  ceil(E * N / B) steps. (epoch, position) is the whole state: a resumed run yields exactly the
  batches an uninterrupted one would.
  Multi-host: every process walks the same global order (batch_size = the global batch) and
  yields only its own rows, process p's being rows p * B_local ... of each global batch (the
  layout bertjax.sharding.shard_batch assembles), so N processes train on exactly the batches
  one process would.
  """

  def __init__(self, arrays: dict[str, np.ndarray], batch_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.arrays = arrays
    self.n = len(next(iter(arrays.values())))
    if not self.n:
      raise ValueError("no training examples")
    if batch_size % process_count:
      raise ValueError(f"global batch {batch_size} does not split over {process_count} processes")
    self.batch_size = batch_size
    local = batch_size // process_count
    self._rows = slice(process_index * local, (process_index + 1) * local)
    self.seed = seed
    self.epoch = 0
    self.pos = 0
    self._perm = None

  def _permutation(self) -> np.ndarray:
    if self._perm is None or self._perm[0] != self.epoch:
      rng = np.random.default_rng([self.seed, self.epoch])
      self._perm = (self.epoch, rng.permutation(self.n))
    return self._perm[1]

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    idx = self.next_indices()[self._rows]                           # this process's rows
    return {k: v[idx] for k, v in self.arrays.items()}

  def next_indices(self) -> np.ndarray:
    """The next global batch's example indices [batch_size] (every process gets the same)."""
    parts, need = [], self.batch_size
    while need:
      take = self._permutation()[self.pos:self.pos + need]
      parts.append(take)
      need -= len(take)
      self.pos += len(take)
      if self.pos >= self.n:
        self.epoch, self.pos = self.epoch + 1, 0
    return np.concatenate(parts)

  def get_state(self) -> dict:
    return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed}

  def set_state(self, state: dict) -> None:
    self.epoch, self.pos = int(state["epoch"]), int(state["pos"])
    self.seed = int(state.get("seed", self.seed))
    self._perm = None

