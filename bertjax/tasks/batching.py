"""Fine-tuning batches sized to their content: padded, length-bucketed or packed rows.

Featurizers make padded arrays: token-level [F, S] (input_ids, segment_ids, input_mask 0/1,
label_ids, label_weights) and example-level [F] (label, start_positions, end_positions); a
feature's tokens are a prefix of its row. `Batcher.batch(features, idx)` lays the features
`idx` out in one of three ways (finetune.batching):

  pad     [B, S]  every row padded to max_seq_length: the original BERT, the reference.
  bucket  [B, L]  L = the smallest of a few fixed lengths (finetune.bucket_lengths) that holds
                  the batch's longest feature: at most len(lengths) shapes, each compiled once.
  pack    [R, S]  the features end to end in R rows (first-fit decreasing), R rounded up to a
                  small fixed set of row counts. input_mask carries the example id of each token
                  (1, 2, ... within a row; 0 = padding), which the model turns into
                  block-diagonal attention; position_ids restart at 0 per example. Example-level
                  values sit in K slots per row ([R, K]): cls_positions (where each example
                  starts), example_weight (1 = a real example), label / start_positions /
                  end_positions (span positions are moved to the row's coordinates). K is the
                  fewest of 8, 16, 32 ... S // 2 (every feature has at least [CLS] and [SEP])
                  that packs into no more rows than S // 2 would (`fewest_slots`): a head that
                  reads only [CLS] computes the last layer at R x K positions.

A `Layout` says where each feature of the batch went (row, slot, offset, length), so outputs
map back to features (`unpack`). Rows added only to reach a row count hold one padding token
marked as an example of its own (no row attends to nothing) with zero weight.
Host-side numpy arrays, the trainer's batches; short batches are padded by the one padding
function, bertjax.sharding.pad_rows.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Optional

import numpy as np

from bertjax.errors import UserError
from bertjax.sharding import pad_rows

MODES = ("pad", "bucket", "pack")
TOKEN_KEYS = ("input_ids", "segment_ids", "input_mask", "label_ids", "label_weights")
EXAMPLE_KEYS = ("label",)
POSITION_KEYS = ("start_positions", "end_positions")


def bucket_lengths(spec: str, max_len: int) -> tuple[int, ...]:
  """finetune.bucket_lengths ("" or "32,64,128") -> sorted lengths ending at max_len.

  "" = powers of two from 32 below max_len, then max_len (128: 32, 64, 128; 384: 32 ... 256,
  384): a row is at most 2x its longest feature, and there are log2(S / 16) shapes."""
  if not spec.strip():
    out, n = [], 32
    while n < max_len:
      out.append(n)
      n *= 2
    return tuple(out) + (max_len,)
  try:
    values = sorted({int(x) for x in spec.split(",") if x.strip()})
  except ValueError:
    raise UserError(f"finetune.bucket_lengths={spec!r}: expected comma-separated integers "
                    f"(e.g. 32,64,{max_len})") from None
  if not values or values[0] < 2 or values[-1] > max_len:
    raise UserError(f"finetune.bucket_lengths={spec!r}: lengths must lie in 2..{max_len} "
                    "(finetune.max_seq_length)")
  return tuple(v for v in values if v < max_len) + (max_len,)


def round_rows(rows: int, multiple: int) -> int:
  """Row count -> the next of multiple x {1, 2, 3, 4, 6, 8, 12, 16, ...} (2^k and 3 x 2^k):
  at most a third of the rows wasted, and few distinct shapes."""
  units = -(-max(rows, 1) // multiple)
  size = 1
  while size < units:
    size = 2 if size < 2 else (size * 3 // 2 if size & (size - 1) == 0 else size * 4 // 3)
  return size * multiple


def plan_row_counts(needed: list[int], multiple: int, shape_cost_rows: float) -> tuple[int, ...]:
  """The training batches' packed row counts -> the few row counts to compile.

  needed: rows each batch of the run packs into (first-fit decreasing). Each distinct row count
  is one more compiled train step, which costs about `shape_cost_rows` rows of training (on a
  CPU core a MiniLM step compiles in ~10 s, the time of ~160 rows of 128 tokens); each batch
  runs at the smallest chosen count that holds it. The choice minimises
  compiles x shape_cost_rows + the rows trained (dynamic programming over the distinct counts,
  in units of `multiple`); the largest needed count is always chosen."""
  units = sorted({-(-max(r, 1) // multiple) for r in needed})
  count = {u: 0 for u in units}
  for r in needed:
    count[-(-max(r, 1) // multiple)] += 1
  # best[j]: the cost of covering units[:j + 1] with units[j] chosen; prev[j]: the choice before
  best, prev = [], []
  for j, u in enumerate(units):
    options = []
    for i in range(-1, j):                       # units[i] the previous chosen count (-1: none)
      rows = sum(count[units[l]] for l in range(i + 1, j + 1)) * u
      options.append(((best[i] if i >= 0 else 0.0) + shape_cost_rows + rows, i))
    cost, i = min(options)
    best.append(cost)
    prev.append(i)
  chosen, j = [], len(units) - 1
  while j >= 0:
    chosen.append(units[j] * multiple)
    j = prev[j]
  return tuple(sorted(chosen))


def first_fit_decreasing(lengths: np.ndarray, capacity: int,
                         max_items: Optional[int] = None) -> list[list[int]]:
  """Bins of at most `capacity` tokens and `max_items` items: longest first, each into the
  first bin it fits. -> per bin, the positions (into `lengths`) it holds, in placement order."""
  order = np.argsort(-lengths, kind="stable")
  max_items = max_items or len(lengths)
  bins, room = [], []
  for i in order:
    n = int(lengths[i])
    for b, r in enumerate(room):
      if n <= r and len(bins[b]) < max_items:
        bins[b].append(int(i))
        room[b] -= n
        break
    else:
      bins.append([int(i)])
      room.append(capacity - n)
  return bins


def slot_choices(max_len: int) -> tuple[int, ...]:
  """The slot counts K a packed row may have: 8, 16, 32 ... below S // 2, then S // 2."""
  out, k = [], 8
  while k < max_len // 2:
    out.append(k)
    k *= 2
  return tuple(out) + (max_len // 2,)


def fewest_slots(max_len: int, fits) -> int:
  """The smallest of `slot_choices` for which `fits(K)` (packing with at most K examples a row
  costs no rows), else S // 2, which costs none by definition."""
  return next((k for k in slot_choices(max_len)[:-1] if fits(k)), max_len // 2)


@dataclasses.dataclass
class Layout:
  """Where each feature of a batch sits: arrays [n] in the order of the batch's `idx`."""
  row: np.ndarray
  slot: np.ndarray       # pack: the example's slot in its row; else 0
  offset: np.ndarray     # first token of the feature in its row
  length: np.ndarray     # real tokens
  packed: bool


class Batcher:
  """Lays features out per `mode`; `row_multiple` divides every row count (devices x
  accumulation steps), `max_len` is S."""

  def __init__(self, mode: str, max_len: int, buckets: tuple[int, ...] = (),
               row_multiple: int = 1):
    if mode not in MODES:
      raise UserError(f"finetune.batching={mode!r}: use one of {', '.join(MODES)}")
    self.mode, self.max_len, self.row_multiple = mode, max_len, row_multiple
    self.buckets = tuple(buckets) or (max_len,)
    self.slots = max_len // 2    # K: training batches' slots (TrainBatches.plan_rows)
    self.row_counts: tuple[int, ...] = ()   # pack: planned counts (plan_row_counts); () = round_rows

  def rows_for(self, bins: int) -> int:
    """Packed rows for a batch of `bins` rows: the smallest planned count that holds it, else
    `round_rows`."""
    return next((r for r in self.row_counts if r >= bins), None) or round_rows(bins,
                                                                              self.row_multiple)

  def bins_needed(self, feats: dict, idx: np.ndarray, slots: Optional[int] = None) -> int:
    """Rows the features `idx` pack into, at most `slots` (default self.slots) a row (no arrays
    built)."""
    lengths = feats["input_mask"][np.asarray(idx, np.int64)].sum(1).astype(np.int64)
    return len(first_fit_decreasing(lengths, self.max_len, slots or self.slots))

  def length_of(self, longest: int) -> int:
    if self.mode == "bucket":
      return next(b for b in self.buckets if b >= longest)
    return self.max_len

  # ---- one batch
  def batch(self, feats: dict, idx: np.ndarray, rows: Optional[int] = None,
            bins: Optional[list[list[int]]] = None,
            slots: Optional[int] = None) -> tuple[dict, Layout]:
    """Features `idx` -> (arrays, layout). pad/bucket: one feature a row, `rows` rows (default
    len(idx); extra rows are padding). pack: the rows of `bins` (positions into idx, at most
    `slots` each (default self.slots); default first-fit decreasing), `rows` rows (default:
    their number rounded by `round_rows`)."""
    idx = np.asarray(idx, np.int64)
    lengths = feats["input_mask"][idx].sum(1).astype(np.int64)                 # [n]
    if self.mode == "pack":
      return self._packed(feats, idx, lengths, rows, bins, slots or self.slots)
    n = len(idx)
    width = self.length_of(int(lengths.max(initial=1)))                       # L
    out = {k: feats[k][idx, :width] for k in TOKEN_KEYS if k in feats}        # [n, L]
    out.update({k: feats[k][idx] for k in EXAMPLE_KEYS + POSITION_KEYS if k in feats})  # [n]
    out = pad_rows(out, rows or n)
    out["input_mask"][n:, 0] = 1   # padding rows: one token, so no row attends to nothing
    zeros = np.zeros(n, np.int64)
    return out, Layout(np.arange(n), zeros, zeros, lengths, packed=False)

  def _packed(self, feats, idx, lengths, rows, bins, k_slots):
    s = self.max_len
    bins = bins if bins is not None else first_fit_decreasing(lengths, s, k_slots)
    r = rows or self.rows_for(len(bins))
    assert len(bins) <= r and max(map(len, bins), default=0) <= k_slots, (len(bins), r)
    n = len(idx)
    row, slot, offset = (np.zeros(n, np.int64) for _ in range(3))
    out = {k: np.zeros((r, s), feats[k].dtype) for k in TOKEN_KEYS if k in feats}
    out["position_ids"] = np.zeros((r, s), np.int32)
    out["cls_positions"] = np.zeros((r, k_slots), np.int32)
    out["example_weight"] = np.zeros((r, k_slots), np.float32)
    for k in EXAMPLE_KEYS + POSITION_KEYS:
      if k in feats:
        out[k] = np.zeros((r, k_slots), feats[k].dtype)
    for b, members in enumerate(bins):
      pos = 0
      for j, i in enumerate(members):
        f, m = idx[i], int(lengths[i])
        sl = slice(pos, pos + m)
        for k in TOKEN_KEYS:
          if k in feats:
            out[k][b, sl] = feats[k][f, :m]
        out["input_mask"][b, sl] = j + 1                               # example id in the row
        out["position_ids"][b, sl] = np.arange(m)
        out["cls_positions"][b, j] = pos
        out["example_weight"][b, j] = 1.0
        for k in EXAMPLE_KEYS:
          if k in feats:
            out[k][b, j] = feats[k][f]
        for k in POSITION_KEYS:
          if k in feats:
            out[k][b, j] = feats[k][f] + pos
        row[i], slot[i], offset[i] = b, j, pos
        pos += m
    out["input_mask"][len(bins):, 0] = 1     # padding rows (see the module docstring)
    return out, Layout(row, slot, offset, lengths, packed=True)

  # ---- evaluation: every feature once, in batches of fixed row counts
  def even_rows(self, rows: int, batch_size: int) -> int:
    """Rows per batch when `rows` rows are cut into batches of at most `batch_size`: as many
    batches as batch_size needs, rows spread evenly over them (rounded up to row_multiple), so
    the last batch is not mostly padding (SST-2's dev set, packed: 3 x 58 rows, not 3 x 64)."""
    batches = -(-rows // batch_size)
    per = -(-rows // max(batches, 1))
    return min(batch_size, -(-per // self.row_multiple) * self.row_multiple)

  def eval_batches(self, feats: dict, batch_size: int) -> Iterator[tuple[dict, np.ndarray, Layout]]:
    """Yields (arrays, feature indices, layout) covering every feature once, in batches of one
    row count (`even_rows`: at most `batch_size`, a multiple of row_multiple). bucket: features
    sorted by length first, so a batch holds features of similar lengths; pack: the whole set
    packed once, then cut into batches of rows."""
    n = len(feats["input_ids"])
    if not n:
      return
    lengths = feats["input_mask"].sum(1)
    if self.mode != "pack":
      batch_size = self.even_rows(n, batch_size)
      order = np.argsort(-lengths, kind="stable") if self.mode == "bucket" else np.arange(n)
      for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        arrays, layout = self.batch(feats, idx, rows=batch_size)
        yield arrays, idx, layout
      return
    # The whole set packed once, with the fewest slots that cost no rows (`fewest_slots`).
    bins = first_fit_decreasing(lengths, self.max_len)
    most = max(map(len, bins))
    found = {}

    def fits(k):
      if k >= most:            # the cap never binds: these very bins, no second packing
        return True
      found[k] = first_fit_decreasing(lengths, self.max_len, k)
      return len(found[k]) <= len(bins)

    slots = fewest_slots(self.max_len, fits)
    bins = found.get(slots, bins)
    batch_size = self.even_rows(len(bins), batch_size)
    for i in range(0, len(bins), batch_size):
      group = bins[i:i + batch_size]
      idx = np.asarray([f for b in group for f in b], np.int64)
      local, start = [], 0                   # the same bins, as positions into idx
      for b in group:
        local.append(list(range(start, start + len(b))))
        start += len(b)
      arrays, layout = self.batch(feats, idx, rows=batch_size, bins=local, slots=slots)
      yield arrays, idx, layout


def unpack_examples(outputs, layout: Layout) -> np.ndarray:
  """Example-level outputs of a batch ([R, (K,) ...]) -> [n, ...] per feature, as numpy
  (classification [n, C], regression [n])."""
  out = np.asarray(outputs)
  return out[layout.row, layout.slot] if layout.packed else out[layout.row]


def unpack_tokens(outputs, layout: Layout, max_len: int, fill: float) -> np.ndarray:
  """Token-level outputs of a batch ([R, L, ...]) -> [n, S, ...] per feature in the padded
  layout, float32 numpy. Positions beyond a feature's length hold `fill` (span logits:
  float32's lowest value, so only real tokens compete in decoding; tagging: 0)."""
  a = np.asarray(outputs)
  pos = np.arange(max_len)
  inside = pos[None, :] < layout.length[:, None]                               # [n, S]
  src = np.minimum(layout.offset[:, None] + pos[None, :], a.shape[1] - 1)      # [n, S]
  got = a[layout.row[:, None], src]                                           # [n, S, ...]
  mask = inside.reshape(inside.shape + (1,) * (got.ndim - 2))
  return np.where(mask, got, fill).astype(np.float32)


class TrainBatches:
  """Endless training batches: the example order of `order` (a featurize.BatchIterator: the
  same global batches on every process, resumable), each global batch laid out by `batcher`
  and cut to this process's rows (rows p * R / P ...: the layout bertjax.sharding.shard_batch
  assembles). Every process lays out the same global batch, so all agree on its shape."""

  def __init__(self, features: dict, order, batcher: Batcher, process_index: int = 0,
               process_count: int = 1):
    self.features, self.order, self.batcher = features, order, batcher
    self.process_index, self.process_count = process_index, process_count

  def plan_rows(self, steps: int, shape_cost_rows: float) -> tuple[int, ...]:
    """pack: choose the batcher's row counts and slots from the run's own first `steps`
    batches (the order from its start state, so a resumed run plans the same shapes); the
    order is left where it was. Row counts: `plan_row_counts` (shape_cost_rows <= 0: fixed,
    `round_rows`); slots: the fewest with which no planned batch needs a larger row count.
    -> the chosen counts (() when not packing or shape_cost_rows <= 0)."""
    b = self.batcher
    if b.mode != "pack" or steps <= 0:
      return ()
    saved = self.order.get_state()
    try:
      batches = [self.order.next_indices() for _ in range(steps)]
    finally:
      self.order.set_state(saved)
    needed = [b.bins_needed(self.features, idx, b.max_len // 2) for idx in batches]
    if shape_cost_rows > 0:
      b.row_counts = plan_row_counts(needed, b.row_multiple, shape_cost_rows)

    def fits(k):
      return all(b.rows_for(b.bins_needed(self.features, idx, k)) <= b.rows_for(n)
                 for idx, n in zip(batches, needed))

    b.slots = fewest_slots(b.max_len, fits)
    return b.row_counts

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    arrays, _ = self.batcher.batch(self.features, self.order.next_indices())
    r = len(arrays["input_ids"]) // self.process_count
    mine = slice(self.process_index * r, (self.process_index + 1) * r)
    return {k: v[mine] for k, v in arrays.items()}

  def get_state(self) -> dict:
    return self.order.get_state()

  def set_state(self, state: dict) -> None:
    self.order.set_state(state)
