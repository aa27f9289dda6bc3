"""MLM-only rows packed to full length (RoBERTa's FULL-SENTENCES, Liu et al. 2019).

Per epoch, the documents are put in a random order (seed, epoch) and concatenated into one token
stream, each document followed by [SEP]; a document stored in several pieces keeps its pieces in
order. The stream is cut into windows of S - 1 tokens and a row is [CLS] + one window, so every
row is full (no padding) and may hold the end of one document and the start of the next. The
windows are then shuffled (seed, epoch), so a batch mixes the whole corpus. A window may start or
end inside a sentence: cutting at exact token counts is what keeps the padding at zero (cutting
only at sentence ends would leave, on average, half a sentence of padding per row).

Two settings for a row holding several documents (data.cross_document_attention):
  False: input_mask carries 1, 2, 3 ... per document of the row (the model's block-diagonal
         attention), and position_ids restart at 0 where a new document starts, so each
         document's tokens give the same outputs as that document's slice run alone.
         [CLS] belongs to the row's first document.
  True:  input_mask is all ones and position_ids run 0..S-1: one sequence, as in RoBERTa.
The tokens left over after the last full window of an epoch are not used in that epoch; the
next epoch's document order puts other tokens there.
"""
from __future__ import annotations

import numpy as np

_S_DOCS, _S_ROWS = 0xD0C, 0x20B


class PackPlan:
  """One epoch's stream layout and row order.

  unit_piece [U]: pieces in stream order; unit_start [U + 1]: stream offset of each (cumsum);
  unit_sep [U] bool: the piece ends its document (a [SEP] follows it in the stream);
  rows [n]: window number of each example of the epoch (a permutation of 0..n-1).
  """

  def __init__(self, unit_piece, unit_start, unit_sep, rows, window):
    self.unit_piece, self.unit_start, self.unit_sep = unit_piece, unit_start, unit_sep
    self.rows, self.window = rows, window

  def __len__(self):
    return len(self.rows)

  def spans(self, j: int) -> list[tuple[int, int, int]]:
    """Example j -> [(piece, first, last)]: stream positions [first, last) within each unit's
    content (the piece's tokens, then its [SEP] when unit_sep), in stream order."""
    lo = int(self.rows[j]) * self.window
    hi = lo + self.window
    u = int(np.searchsorted(self.unit_start, lo, side="right")) - 1
    out = []
    while lo < hi:
      u0, u1 = int(self.unit_start[u]), int(self.unit_start[u + 1])
      take = min(hi, u1)
      out.append((u, lo - u0, take - u0))
      lo = take
      u += 1
    return out


def piece_tokens(piece_off: np.ndarray, sent_off: np.ndarray) -> np.ndarray:
  """[n_pieces] tokens per piece from the sentence index (piece_off: first sentence per piece)."""
  return sent_off[piece_off[1:]] - sent_off[piece_off[:-1]]


def plan_epoch(piece_len: np.ndarray, doc_first: np.ndarray, *, seed: int, epoch: int,
               window: int) -> PackPlan:
  """The epoch's stream (random document order) and its shuffled windows of `window` tokens.

  piece_len [n_pieces]: tokens per piece; doc_first [n_docs + 1]: first piece of each document
  (a document's pieces are consecutive).
  """
  n_docs = len(doc_first) - 1
  order = np.random.default_rng([seed, epoch, _S_DOCS]).permutation(n_docs)   # [n_docs]
  counts = np.diff(doc_first)[order]                                           # [n_docs]
  # pieces of the ordered documents, each document's pieces in their stored order
  starts = np.repeat(doc_first[:-1][order], counts)                            # [U]
  within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
  unit_piece = starts + within                                                 # [U]
  unit_sep = np.zeros(len(unit_piece), bool)
  unit_sep[np.cumsum(counts)[counts > 0] - 1] = True   # last piece of a document: [SEP] after it
  lengths = piece_len[unit_piece] + unit_sep                                   # [U]
  unit_start = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])      # [U + 1]
  n = int(unit_start[-1]) // window
  rows = np.random.default_rng([seed, epoch, _S_ROWS]).permutation(n)         # [n]
  return PackPlan(unit_piece, unit_start, unit_sep, rows, window)


def build_rows(plan_spans: list[list[tuple[int, int, int]]], unit_piece: list[np.ndarray],
               tokens: dict, piece_doc: np.ndarray, *, seq_len: int, cls_id: int, sep_id: int,
               pad_id: int, cross_document: bool) -> dict:
  """Rows from their spans (PackPlan.spans per row, with each plan's unit_piece).

  tokens: piece -> its token ids. Returns input_ids, input_mask, position_ids [b, S] int32:
  input_mask 1, 2, 3 ... per document of the row (all ones when cross_document), position_ids
  restarting per document (0..S-1 when cross_document).
  """
  b = len(plan_spans)
  ids = np.full((b, seq_len), pad_id, np.int32)                               # [b, S]
  doc = np.zeros((b, seq_len), np.int32)                                       # [b, S]
  ids[:, 0] = cls_id
  for r, (spans, pieces) in enumerate(zip(plan_spans, unit_piece)):
    at, rank, last_doc = 1, 0, None
    doc[r, 0] = 1                    # [CLS] belongs to the row's first document
    for u, first, last in spans:
      piece = int(pieces[u])
      toks = tokens[piece]
      d = int(piece_doc[piece])
      if d != last_doc:
        rank, last_doc = rank + 1, d
      body_end = min(last, len(toks))
      n = body_end - first
      if n > 0:
        ids[r, at:at + n] = toks[first:body_end]
      if last > len(toks):           # the document's [SEP] falls inside this window
        ids[r, at + max(n, 0)] = sep_id
      doc[r, at:at + (last - first)] = rank
      at += last - first
  pos = np.arange(seq_len)[None, :]                                            # [1, S]
  if cross_document:
    mask = (doc > 0).astype(np.int32)
    positions = np.broadcast_to(pos, (b, seq_len)).astype(np.int32)
  else:
    mask = doc
    # first column of each run of equal document ids; positions count from there
    new = np.ones((b, seq_len), bool)
    new[:, 1:] = doc[:, 1:] != doc[:, :-1]
    run_start = np.maximum.accumulate(np.where(new, pos, 0), axis=1)           # [b, S]
    positions = (pos - run_start).astype(np.int32)
  return {"input_ids": ids, "input_mask": mask, "position_ids": positions}
