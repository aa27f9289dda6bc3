"""Pretraining batches from prepared shards, built on the fly with grain.

Example index k of the endless stream = example j of epoch e (epochs are concatenated; each is
`pairs.plan_epoch`'s shuffled chunks). Global batch i holds examples [i*G, (i+1)*G); process p of
P builds rows [p*G/P, (p+1)*G/P) of it. All randomness hashes (seed, epoch, j), so batches are
identical for any number of worker processes or hosts, and the grain iterator state (the next
batch index) is all a resume needs.

Batch fields (numpy): input_ids, input_mask, segment_ids [b, S] int32; masked_lm_positions,
masked_lm_ids [b, P] int32; masked_lm_weights [b, P] float32; next_sentence_labels [b] int32
(0 = IsNext, 1 = NotNext, as in BERT).
"""
from __future__ import annotations

import bisect
import os
import sys
import threading

import grain
import numpy as np

from bertjax.data import masking, pairs, rng, shards
from bertjax.data.prepare import load_manifest
from bertjax.errors import UserError

_S_EXAMPLE = 0xE8A


class _PretrainBatches:
  """Callable: global batch index -> this process's rows of it. Picklable for grain workers."""

  def __init__(self, prepared_dir: str, split: str, *, global_batch_size: int,
               max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float,
               short_seq_prob: float, whole_word_masking: bool, seed: int, process_index: int,
               process_count: int):
    manifest = load_manifest(prepared_dir)
    if split not in manifest["splits"]:
      raise UserError(f"{prepared_dir}: no split {split!r}; use one of {sorted(manifest['splits'])}")
    info = manifest["splits"][split]
    if info["pieces"] == 0:
      raise UserError(f"{prepared_dir}: split {split!r} is empty (see manifest.json summary); "
                      "raise data.heldout_fraction or add documents")
    if global_batch_size % process_count:
      raise UserError(f"global batch {global_batch_size} is not divisible by "
                      f"{process_count} processes")
    if max_seq_length < 8:
      raise UserError(f"max_seq_length={max_seq_length}: use at least 8")
    self.dir, self.split = prepared_dir, split
    self.g, self.s, self.p = global_batch_size, max_seq_length, max_predictions_per_seq
    self.b = global_batch_size // process_count
    self.row0 = process_index * self.b
    self.masked_lm_prob, self.short_seq_prob = masked_lm_prob, short_seq_prob
    self.whole_word_masking, self.seed = whole_word_masking, seed
    self.store = shards.DocStore(prepared_dir, info, manifest["token_dtype"])
    sp = manifest["special_ids"]
    self.cls_id, self.sep_id, self.mask_id, self.pad_id = sp["cls"], sp["sep"], sp["mask"], sp["pad"]
    self._tables = dict(np.load(os.path.join(prepared_dir, "token_tables.npz")))
    self._init_local()

  def _init_local(self):
    sent, pieces = shards.load_index(self.dir, self.split)
    self.sent_lens = sent
    self.piece_doc = pieces[:, 0]                                                # [n_pieces]
    self.piece_off = np.concatenate([[0], np.cumsum(pieces[:, 1], dtype=np.int64)])
    # documents -> their first piece (pieces of a document are consecutive)
    firsts = np.flatnonzero(np.r_[True, self.piece_doc[1:] != self.piece_doc[:-1]])
    self.doc_first = np.append(firsts, len(self.piece_doc))                      # [n_docs + 1]
    self._plans: dict[int, pairs.Plan] = {}
    self._epoch_starts = [0]
    self._lock = threading.Lock()

  def __getstate__(self):
    state = {k: v for k, v in self.__dict__.items()
             if k not in ("sent_lens", "piece_doc", "piece_off", "doc_first", "_plans",
                          "_epoch_starts", "_lock")}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_local()

  # -------------------------------------------------------------- epochs
  def plan(self, epoch: int) -> pairs.Plan:
    with self._lock:
      if epoch not in self._plans:
        if len(self._plans) >= 2:  # keep the current and the next epoch
          self._plans.pop(min(self._plans))
        self._plans[epoch] = pairs.plan_epoch(
            self.sent_lens, self.piece_off, seed=self.seed, epoch=epoch,
            max_num_tokens=self.s - 3, short_seq_prob=self.short_seq_prob)
      return self._plans[epoch]

  def epoch_size(self, epoch: int) -> int:
    while len(self._epoch_starts) <= epoch + 1:
      e = len(self._epoch_starts) - 1
      self._epoch_starts.append(self._epoch_starts[-1] + len(self.plan(e)))
    return self._epoch_starts[epoch + 1] - self._epoch_starts[epoch]

  def locate(self, k: int) -> tuple[int, int]:
    """Example index of the stream -> (epoch, index within the epoch)."""
    while self._epoch_starts[-1] <= k:
      self.epoch_size(len(self._epoch_starts) - 1)
    e = bisect.bisect_right(self._epoch_starts, k) - 1
    return e, k - self._epoch_starts[e]

  # -------------------------------------------------------------- batches
  def __call__(self, batch_index: int) -> dict:
    first = int(batch_index) * self.g + self.row0
    return self.build([self.locate(k) for k in range(first, first + self.b)])

  def build(self, examples: list[tuple[int, int]]) -> dict:
    """(epoch, index) pairs -> one batch dict (rows in the given order)."""
    b, s = len(examples), self.s
    max_tokens = s - 3
    ids = np.full((b, s), self.pad_id, np.int32)                          # [b, S]
    seg = np.zeros((b, s), np.int32)                                      # [b, S]
    lengths = np.zeros(b, np.int64)                                       # [b]
    nsp = np.zeros(b, np.int32)                                           # [b]
    keys = np.zeros(b, np.uint64)                                         # [b]
    rows = []
    for e, j in examples:
      pl = self.plan(e)
      rows.append((e, j, int(pl.piece[j]), int(pl.start[j]), int(pl.a_end[j]), int(pl.end[j]),
                   int(pl.target[j]), bool(pl.random_next[j])))
    # NotNext: a random other document, then a random piece of it (BERT: 10 tries)
    rand_piece = {}
    for r, (e, j, piece, _, _, _, _, rn) in enumerate(rows):
      if rn:
        rand_piece[r] = self._random_piece(e, j, piece)
    need = sorted({row[2] for row in rows} | set(rand_piece.values()))
    docs = dict(zip(need, self.store.read(np.array(need))))
    for r, (e, j, piece, st, a_end, end, target, rn) in enumerate(rows):
      lens, toks = docs[piece]
      offs = self._offsets(lens)
      a = toks[offs[st]:offs[a_end]]
      if rn:
        rlens, rtoks = docs[rand_piece[r]]
        roffs = self._offsets(rlens)
        rs = rng.randint(0, len(rlens) - 1, self.seed, e, j, pairs._S_START)
        want = roffs[rs] + max(target - len(a), 1)   # sentences from rs until >= target_b
        re_ = min(bisect.bisect_left(roffs, want), len(rlens))
        bseg = rtoks[roffs[rs]:roffs[max(re_, rs + 1)]]
      else:
        bseg = toks[offs[a_end]:offs[end]]
      la, lb = pairs.truncated_lengths(len(a), len(bseg), max_tokens)
      fa = rng.coin_flips(len(a) - la, self.seed, e, j, pairs._S_TRUNC_A)   # removed from front
      fb = rng.coin_flips(len(bseg) - lb, self.seed, e, j, pairs._S_TRUNC_B)
      a, bseg = a[fa:fa + la], bseg[fb:fb + lb]
      ids[r, 0] = self.cls_id
      ids[r, 1:1 + la] = a
      ids[r, 1 + la] = self.sep_id
      ids[r, 2 + la:2 + la + lb] = bseg
      ids[r, 2 + la + lb] = self.sep_id
      seg[r, 2 + la:3 + la + lb] = 1
      lengths[r] = 3 + la + lb
      nsp[r] = int(rn)
      keys[r] = rng.mix(self.seed, e, j, _S_EXAMPLE)
    pos = np.arange(s)[None, :]
    input_mask = (pos < lengths[:, None]).astype(np.int32)                # [b, S]
    maskable = (input_mask > 0) & ~self._tables["special"][ids]           # [b, S]
    mlm = masking.mask_batch(
        ids, maskable, keys, masked_lm_prob=self.masked_lm_prob, max_predictions=self.p,
        mask_id=self.mask_id, random_pool=self._tables["pool"],
        word_start=self._tables["word_start"] if self.whole_word_masking else None)
    return {"input_ids": ids, "input_mask": input_mask, "segment_ids": seg, **mlm,
            "next_sentence_labels": nsp}

  @staticmethod
  def _offsets(lens: np.ndarray) -> list[int]:
    return [0] + np.cumsum(lens).tolist()

  def _random_piece(self, e: int, j: int, piece: int) -> int:
    n_docs = len(self.doc_first) - 1
    own = self.piece_doc[piece]
    doc = own
    for t in range(10):
      doc = rng.randint(0, n_docs - 1, self.seed, e, j, pairs._S_DOC, t)
      if self.piece_doc[self.doc_first[doc]] != own:
        break
    lo, hi = self.doc_first[doc], self.doc_first[doc + 1]
    return int(lo + rng.randint(0, hi - lo - 1, self.seed, e, j, pairs._S_DOC, 99))


def make_pretrain_iterator(prepared_dir: str, split: str, *, global_batch_size: int,
                           max_seq_length: int, max_predictions_per_seq: int,
                           masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1,
                           whole_word_masking: bool = False, seed: int = 0,
                           process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                           num_epochs: int | None = None) -> grain.DatasetIterator:
  """Iterator of this process's [global_batch_size // process_count, ...] batches.

  num_epochs=None: endless (training). num_epochs=n: the full batches of the first n epochs
  (evaluation; the last partial batch is dropped). get_state()/set_state() resume exactly.
  """
  fn = _PretrainBatches(prepared_dir, split, global_batch_size=global_batch_size,
                        max_seq_length=max_seq_length,
                        max_predictions_per_seq=max_predictions_per_seq,
                        masked_lm_prob=masked_lm_prob, short_seq_prob=short_seq_prob,
                        whole_word_masking=whole_word_masking, seed=seed,
                        process_index=process_index, process_count=process_count)
  if num_epochs is None:
    n_batches = sys.maxsize
  else:
    total = sum(fn.epoch_size(e) for e in range(num_epochs))
    n_batches = total // global_batch_size
    if n_batches == 0:
      raise UserError(f"{prepared_dir} split {split!r}: {total} examples in {num_epochs} "
                      f"epoch(s), fewer than one global batch of {global_batch_size}; lower the "
                      "batch size or add data")
  ds = grain.MapDataset.range(n_batches).map(fn)
  # One background thread overlaps batch building with the training step; small buffer.
  it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  if num_workers > 0:
    from absl import flags
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; a non-absl main has none
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers,
                                                           per_worker_buffer_size=2))
  return iter(it_ds)
