"""Pretraining batches from prepared shards, built on the fly with grain.

Example index k of the endless stream = example j of epoch e (epochs are concatenated). Global
batch i holds examples [i*G, (i+1)*G); process p of P builds rows [p*G/P, (p+1)*G/P) of it. All
randomness hashes (seed, epoch, j), so batches are identical for any number of worker processes
or hosts, and the iterator state (the next example index) is all a resume needs.

Two objectives (data.objective):
  nsp: BERT's segment pairs (`pairs.plan_epoch`'s shuffled chunks) with next-sentence labels;
  mlm: rows packed to full length from consecutive text of one or more documents (`packing`).
The masking rate may follow a schedule over the steps (masking.rate_at): batch i is step
`step_offset + i`, so the rate, too, is a function of the position in the stream.

Batch fields (numpy): input_ids, input_mask, segment_ids [b, S] int32; masked_lm_positions,
masked_lm_ids [b, P] int32; masked_lm_weights [b, P] float32; nsp adds next_sentence_labels [b]
int32 (0 = IsNext, 1 = NotNext, as in BERT); mlm adds position_ids [b, S] int32 and its
input_mask numbers the documents of a row (see packing).

Just over 400 lines: both objectives' per-example transforms and the one resumable iterator
that drives them share the (seed, epoch, index) keying above, so they stay in one file; pair
building, masking and packing themselves live in pairs.py, masking.py and packing.py.
"""
from __future__ import annotations

import bisect
import os
import sys
import threading
import warnings

import grain
import numpy as np

from bertjax.data import masking, packing, pairs, rng, shards
from bertjax.data.prepare import FORMAT_VERSION, load_manifest
from bertjax.errors import UserError

_S_EXAMPLE, _S_PAIR = 0xE8A, 0xE8B
OBJECTIVES = ("nsp", "mlm")


class _Batches:
  """Callable: global batch index -> this process's rows of it. Picklable for grain workers.
  Subclasses define `plan(epoch)` (anything with a len) and `build(examples, rate)`."""

  def __init__(self, prepared_dir: str, split: str, *, global_batch_size: int,
               max_seq_length: int, max_predictions_per_seq: int, masked_lm_prob: float,
               whole_word_masking: bool, seed: int, process_index: int, process_count: int,
               masked_lm_prob_end: float = 0.0, schedule_steps: int = 0, step_offset: int = 0,
               mask_token_prob: float = 0.8, random_token_prob: float = 0.1):
    manifest = load_manifest(prepared_dir)
    if manifest.get("fingerprint", {}).get("version") != FORMAT_VERSION:
      raise UserError(f"{prepared_dir}: prepared by another bertjax version; re-run "
                      f"`bertjax prepare --out {prepared_dir}`")
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
    if not 1 <= max_predictions_per_seq <= max_seq_length:
      raise UserError(f"max_predictions_per_seq={max_predictions_per_seq}: use 1..max_seq_length")
    if not 0.0 < masked_lm_prob < 1.0 or not 0.0 <= masked_lm_prob_end < 1.0:
      raise UserError(f"masked_lm_prob={masked_lm_prob} must be in (0, 1) and "
                      f"masked_lm_prob_end={masked_lm_prob_end} in [0, 1) (0 = constant rate)")
    if min(mask_token_prob, random_token_prob) < 0 or mask_token_prob + random_token_prob > 1:
      raise UserError(f"mask_token_prob={mask_token_prob} + random_token_prob="
                      f"{random_token_prob} must be non-negative and sum to at most 1")
    self.dir, self.split = prepared_dir, split
    self.g, self.s, self.p = global_batch_size, max_seq_length, max_predictions_per_seq
    self.b = global_batch_size // process_count
    self.row0 = process_index * self.b
    self.masked_lm_prob, self.masked_lm_prob_end = masked_lm_prob, masked_lm_prob_end
    self.schedule_steps, self.step_offset = schedule_steps, step_offset
    self.mask_token_prob, self.random_token_prob = mask_token_prob, random_token_prob
    self.whole_word_masking, self.seed = whole_word_masking, seed
    self.n_documents = info["documents"]
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
    self.sent_off = shards.load_offsets(self.dir, self.split)                   # [n_sent + 1]
    # documents -> their first piece (pieces of a document are consecutive)
    firsts = np.flatnonzero(np.r_[True, self.piece_doc[1:] != self.piece_doc[:-1]])
    self.doc_first = np.append(firsts, len(self.piece_doc))                      # [n_docs + 1]
    self._plans: dict = {}
    self._epoch_starts = [0]
    self._lock = threading.Lock()

  def __getstate__(self):
    state = {k: v for k, v in self.__dict__.items()
             if k not in ("sent_lens", "sent_off", "piece_doc", "piece_off", "doc_first", "_plans",
                          "_epoch_starts", "_lock")}
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._init_local()

  def rate(self, batch_index: int) -> float:
    """The masking rate of this iterator's batch `batch_index` (its step on the schedule)."""
    return masking.rate_at(self.step_offset + int(batch_index), start=self.masked_lm_prob,
                           end=self.masked_lm_prob_end, num_steps=self.schedule_steps)

  def _cached_plan(self, epoch: int, make):
    with self._lock:
      if epoch not in self._plans:
        if len(self._plans) >= 2:  # keep the current and the next epoch
          self._plans.pop(min(self._plans))
        self._plans[epoch] = make()
      return self._plans[epoch]

  def _mask(self, ids, maskable, keys, rate) -> dict:
    return masking.mask_batch(
        ids, maskable, keys, masked_lm_prob=rate, max_predictions=self.p,
        mask_id=self.mask_id, random_pool=self._tables["pool"],
        word_start=self._tables["word_start"] if self.whole_word_masking else None,
        mask_token_prob=self.mask_token_prob, random_token_prob=self.random_token_prob)

  # -------------------------------------------------------------- epochs
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
    return self.build([self.locate(k) for k in range(first, first + self.b)],
                      self.rate(batch_index))


class _PairBatches(_Batches):
  """objective nsp: BERT's segment pairs with next-sentence labels (see `pairs`)."""

  def __init__(self, prepared_dir: str, split: str, *, short_seq_prob: float, **kw):
    if not 0.0 <= short_seq_prob <= 1.0:
      raise UserError(f"short_seq_prob={short_seq_prob} must be in [0, 1]")
    self.short_seq_prob = short_seq_prob
    super().__init__(prepared_dir, split, **kw)
    if self.n_documents < 2:
      warnings.warn(f"{prepared_dir} split {split!r} has one document: NotNext segments will "
                    "come from that same document; add documents for a meaningful NSP task",
                    stacklevel=3)

  def identity(self) -> dict:
    return {"objective": "nsp", "short_seq_prob": self.short_seq_prob}

  def plan(self, epoch: int) -> pairs.Plan:
    return self._cached_plan(epoch, lambda: pairs.plan_epoch(
        self.sent_lens, self.piece_off, seed=self.seed, epoch=epoch,
        max_num_tokens=self.s - 3, short_seq_prob=self.short_seq_prob,
        sent_offsets=self.sent_off))

  def build(self, examples: list[tuple[int, int]], rate: float) -> dict:
    """(epoch, index) pairs -> one batch dict (rows in the given order), masked at `rate`."""
    b, s = len(examples), self.s
    max_tokens = s - 3
    ep = np.array([e for e, _ in examples], np.int64)                       # [b]
    jj = np.array([j for _, j in examples], np.int64)                       # [b]
    piece, start, a_end, end, target = (np.empty(b, np.int64) for _ in range(5))
    rnext = np.empty(b, bool)
    for e in np.unique(ep):                       # plan rows (a batch rarely spans 2 epochs)
      pl, w = self.plan(int(e)), ep == e
      for dst, src in ((piece, pl.piece), (start, pl.start), (a_end, pl.a_end), (end, pl.end),
                       (target, pl.target), (rnext, pl.random_next)):
        dst[w] = src[jj[w]]
    keys = rng.mix_array(self.seed, ep, jj, _S_EXAMPLE)                     # [b] uint64
    u = rng.uniform_grid(keys, _S_PAIR, 12)                                 # [b, 12]
    # NotNext: a random other document (BERT: up to 10 tries), a random piece of it, a random
    # start sentence; B = sentences from there until it reaches target - len(A) tokens.
    n_docs = len(self.doc_first) - 1
    own = self.piece_doc[piece]                                             # [b]
    tries = (u[:, :10] * n_docs).astype(np.int64)                           # [b, 10]
    ok = tries != own[:, None]
    doc = tries[np.arange(b), np.where(ok.any(1), ok.argmax(1), 9)]         # [b]
    lo, hi = self.doc_first[doc], self.doc_first[doc + 1]
    rpiece = lo + (u[:, 10] * (hi - lo)).astype(np.int64)                   # [b]
    g0 = self.piece_off[piece]                                              # [b] first sentence
    off = self.sent_off                                                     # [n_sent + 1]
    base = off[g0]
    a0, a1 = off[g0 + start] - base, off[g0 + a_end] - base                 # [b] token offsets
    b0, b1 = a1, off[g0 + end] - base
    r0 = self.piece_off[rpiece]
    rn = self.piece_off[rpiece + 1] - r0
    rs = r0 + (u[:, 11] * rn).astype(np.int64)                              # [b] global sentence
    want = off[rs] + np.maximum(target - (a1 - a0), 1)
    re_ = np.clip(np.searchsorted(off, want, side="left"), rs + 1, r0 + rn)
    rbase = off[r0]
    b0 = np.where(rnext, off[rs] - rbase, b0)
    b1 = np.where(rnext, off[re_] - rbase, b1)
    bpiece = np.where(rnext, rpiece, piece)
    # truncate_seq_pair: lengths in closed form, front/back removals by coin flips
    la0, lb0 = a1 - a0, b1 - b0
    la, lb = _truncated_lengths(la0, lb0, max_tokens)
    a0 = a0 + rng.coin_flips_array(la0 - la, keys, pairs._S_TRUNC_A)
    b0 = b0 + rng.coin_flips_array(lb0 - lb, keys, pairs._S_TRUNC_B)

    need = np.unique(np.concatenate([piece, bpiece]))
    docs = dict(zip(need.tolist(), self.store.read(need)))
    ids = np.full((b, s), self.pad_id, np.int32)                            # [b, S]
    ids[:, 0] = self.cls_id
    for r, (pa, pb, x0, nx, y0, ny) in enumerate(zip(piece.tolist(), bpiece.tolist(),
                                                     a0.tolist(), la.tolist(), b0.tolist(),
                                                     lb.tolist())):
      ids[r, 1:1 + nx] = docs[pa][1][x0:x0 + nx]
      ids[r, 2 + nx:2 + nx + ny] = docs[pb][1][y0:y0 + ny]
    rows = np.arange(b)
    ids[rows, 1 + la] = self.sep_id
    ids[rows, 2 + la + lb] = self.sep_id
    pos = np.arange(s)[None, :]                                             # [1, S]
    lengths = (3 + la + lb)[:, None]                                        # [b, 1]
    input_mask = (pos < lengths).astype(np.int32)                           # [b, S]
    seg = ((pos >= (2 + la)[:, None]) & (pos < lengths)).astype(np.int32)   # [b, S]
    maskable = (input_mask > 0) & ~self._tables["special"][ids]             # [b, S]
    mlm = self._mask(ids, maskable, keys, rate)
    return {"input_ids": ids, "input_mask": input_mask, "segment_ids": seg, **mlm,
            "next_sentence_labels": rnext.astype(np.int32)}


class _PackedBatches(_Batches):
  """objective mlm: rows packed to full length from the epoch's document stream (`packing`)."""

  def __init__(self, prepared_dir: str, split: str, *, cross_document_attention: bool, **kw):
    self.cross_document = cross_document_attention
    super().__init__(prepared_dir, split, **kw)

  def _init_local(self):
    super()._init_local()
    self.piece_len = packing.piece_tokens(self.piece_off, self.sent_off)       # [n_pieces]

  def __getstate__(self):
    state = super().__getstate__()
    state.pop("piece_len", None)
    return state

  def identity(self) -> dict:
    return {"objective": "mlm", "cross_document_attention": self.cross_document}

  def plan(self, epoch: int) -> packing.PackPlan:
    return self._cached_plan(epoch, lambda: packing.plan_epoch(
        self.piece_len, self.doc_first, seed=self.seed, epoch=epoch, window=self.s - 1))

  def build(self, examples: list[tuple[int, int]], rate: float) -> dict:
    """(epoch, index) pairs -> one batch dict (rows in the given order), masked at `rate`."""
    plans = [self.plan(e) for e, _ in examples]
    spans = [pl.spans(j) for pl, (_, j) in zip(plans, examples)]
    need = np.unique([int(pl.unit_piece[u]) for pl, sp in zip(plans, spans) for u, _, _ in sp])
    tokens = {p: toks for p, (_, toks) in zip(need.tolist(), self.store.read(need))}
    rows = packing.build_rows(spans, [pl.unit_piece for pl in plans], tokens, self.piece_doc,
                              seq_len=self.s, cls_id=self.cls_id, sep_id=self.sep_id,
                              pad_id=self.pad_id, cross_document=self.cross_document)
    ids = rows["input_ids"]                                                 # [b, S]
    ep = np.array([e for e, _ in examples], np.int64)                       # [b]
    jj = np.array([j for _, j in examples], np.int64)                       # [b]
    keys = rng.mix_array(self.seed, ep, jj, _S_EXAMPLE)                     # [b] uint64
    maskable = (rows["input_mask"] > 0) & ~self._tables["special"][ids]     # [b, S]
    mlm = self._mask(ids, maskable, keys, rate)
    return {"input_ids": ids, "input_mask": rows["input_mask"],
            "segment_ids": np.zeros_like(ids), "position_ids": rows["position_ids"], **mlm}


def _truncated_lengths(la: np.ndarray, lb: np.ndarray, max_tokens: int):
  """Vectorised pairs.truncated_lengths."""
  excess = la + lb - max_tokens
  d = np.abs(la - lb)
  rest = np.maximum(excess - d, 0)
  lo = np.minimum(la, lb)
  cut_a = np.where(excess <= d, np.where(la > lb, la - np.maximum(excess, 0), la), lo - rest // 2)
  cut_b = np.where(excess <= d, np.where(la > lb, lb, lb - np.maximum(excess, 0)),
                   lo - (rest + 1) // 2)
  keep = excess <= 0
  return np.where(keep, la, cut_a), np.where(keep, lb, cut_b)


class PretrainIterator:
  """The grain pipeline with a portable state: {"next_example": ...} (plus what it depends on).

  The state names a position in the example stream, not grain's per-worker bookkeeping, so a
  run may resume with another num_workers, process count or (when the position divides)
  global batch size. grain's own iterator is (re)built lazily from that position.
  """

  global_position = True  # the state is the same on every process (bertjax.checkpoint)

  def __init__(self, fn: _Batches, n_batches: int, num_workers: int):
    self.fn, self.n_batches, self.num_workers = fn, n_batches, num_workers
    self._next = 0
    self._it = None

  def _build(self):
    ds = grain.MapDataset.range(self._next, self.n_batches).map(self.fn)
    # One background thread overlaps batch building with the training step; small buffer.
    it_ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if self.num_workers > 0:
      from absl import flags
      if not flags.FLAGS.is_parsed():  # grain workers read absl flags; a non-absl main has none
        flags.FLAGS.mark_as_parsed()
      it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers,
                                                             per_worker_buffer_size=2))
    return iter(it_ds)

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self._it is None:
      if self._next >= self.n_batches:
        raise StopIteration
      self._it = self._build()
    batch = next(self._it)
    self._next += 1
    return batch

  def _identity(self) -> dict:
    f = self.fn
    return {"split": f.split, "seed": f.seed, "max_seq_length": f.s,
            "max_predictions_per_seq": f.p, "masked_lm_prob": f.masked_lm_prob,
            "masked_lm_prob_end": f.masked_lm_prob_end, "mask_token_prob": f.mask_token_prob,
            "random_token_prob": f.random_token_prob,
            "whole_word_masking": f.whole_word_masking, **f.identity()}

  def get_state(self) -> dict:
    return {"next_example": self._next * self.fn.g, "global_batch_size": self.fn.g,
            **self._identity()}

  def set_state(self, state: dict) -> None:
    if "next_example" not in state:
      raise UserError("data iterator state is not from bertjax.data.pipeline "
                      f"(keys {sorted(state)}); cannot resume the input pipeline from it")
    saved_objective = state.get("objective", "nsp")
    if saved_objective != self.fn.identity()["objective"]:
      raise UserError(f"the saved data position is for data.objective={saved_objective}, this "
                      f"run has {self.fn.identity()['objective']}; resume with "
                      f"data.objective={saved_objective} or use a new workdir")
    changed = {k: (state[k], v) for k, v in self._identity().items()
               if k in state and state[k] != v}
    if changed:
      warnings.warn(f"resuming the input pipeline with changed settings {changed}: the "
                    "stream continues at the saved position with the new settings", stacklevel=2)
    n = int(state["next_example"])
    if n % self.fn.g:
      raise UserError(f"saved data position {n} is not a multiple of the global batch size "
                      f"{self.fn.g}; resume with train.global_batch_size="
                      f"{state.get('global_batch_size')}")
    self.close()
    self._next = n // self.fn.g

  def close(self) -> None:
    if self._it is not None and hasattr(self._it, "close"):
      self._it.close()
    self._it = None


def make_pretrain_iterator(prepared_dir: str, split: str, *, global_batch_size: int,
                           max_seq_length: int, max_predictions_per_seq: int,
                           masked_lm_prob: float = 0.15, short_seq_prob: float = 0.1,
                           whole_word_masking: bool = False, seed: int = 0,
                           process_index: int = 0, process_count: int = 1, num_workers: int = 0,
                           num_epochs: int | None = None, objective: str = "nsp",
                           cross_document_attention: bool = False,
                           masked_lm_prob_end: float = 0.0, schedule_steps: int = 0,
                           step_offset: int = 0, mask_token_prob: float = 0.8,
                           random_token_prob: float = 0.1) -> PretrainIterator:
  """Iterator of this process's [global_batch_size // process_count, ...] batches.

  objective: nsp (segment pairs + NSP labels) | mlm (packed rows; cross_document_attention says
  whether a row's documents see each other). masked_lm_prob_end > 0: the rate moves linearly to
  it over `schedule_steps` steps, batch i being step step_offset + i.
  num_epochs=None: endless (training). num_epochs=n: the full batches of the first n epochs
  (evaluation; the last partial batch is dropped). get_state()/set_state() resume exactly,
  also with another num_workers / process count (see PretrainIterator).
  """
  common = dict(global_batch_size=global_batch_size, max_seq_length=max_seq_length,
                max_predictions_per_seq=max_predictions_per_seq, masked_lm_prob=masked_lm_prob,
                whole_word_masking=whole_word_masking, seed=seed, process_index=process_index,
                process_count=process_count, masked_lm_prob_end=masked_lm_prob_end,
                schedule_steps=schedule_steps, step_offset=step_offset,
                mask_token_prob=mask_token_prob, random_token_prob=random_token_prob)
  if objective == "nsp":
    fn = _PairBatches(prepared_dir, split, short_seq_prob=short_seq_prob, **common)
  elif objective == "mlm":
    fn = _PackedBatches(prepared_dir, split, cross_document_attention=cross_document_attention,
                        **common)
  else:
    raise UserError(f"data.objective={objective!r}: use one of {', '.join(OBJECTIVES)}")
  if num_epochs is None:
    n_batches = sys.maxsize
  else:
    total = sum(fn.epoch_size(e) for e in range(num_epochs))
    n_batches = total // global_batch_size
    if n_batches == 0:
      raise UserError(f"{prepared_dir} split {split!r}: {total} examples in {num_epochs} "
                      f"epoch(s), fewer than one global batch of {global_batch_size}; lower the "
                      "batch size or add data")
  return PretrainIterator(fn, n_batches, num_workers)


_PretrainBatches = _PairBatches  # the older name (benchmarks/bench_data.py builds it directly)
