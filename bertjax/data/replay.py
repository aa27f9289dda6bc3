"""Fixed batches, saved once and replayed: the same data for two trainers (or two runs).

A pretraining comparison must feed both implementations the very same batches, masks included.
`save_batches` writes a list of batches (dicts of equal-keyed numpy arrays) to one .npz, each
field stacked to [N, B, ...]; `load_batches` reads them back; `ReplayIterator` yields them to the
trainer (bertjax.train.loop) with the get_state()/set_state() a checkpoint needs.
"""
from __future__ import annotations

import numpy as np

from bertjax.errors import UserError


def save_batches(path: str, batches: list[dict]) -> None:
  """[{field: [B, ...]}] * N -> one .npz of {field: [N, B, ...]}."""
  if not batches:
    raise UserError(f"{path}: no batches to save")
  keys = sorted(batches[0])
  np.savez(path, **{k: np.stack([np.asarray(b[k]) for b in batches]) for k in keys})


def load_batches(path: str) -> list[dict]:
  """The batches `save_batches` wrote, in order."""
  with np.load(path) as z:
    fields = {k: z[k] for k in z.files}
  n = len(next(iter(fields.values())))
  return [{k: v[i] for k, v in fields.items()} for i in range(n)]


class ReplayIterator:
  """Yields saved batches in order, then stops (StopIteration ends training early)."""

  global_position = True  # batches_read counts global batches (bertjax.checkpoint)

  def __init__(self, batches: list[dict]):
    self.batches, self.n = batches, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    if self.n >= len(self.batches):
      raise StopIteration
    self.n += 1
    return self.batches[self.n - 1]

  def get_state(self) -> dict:
    return {"batches_read": self.n}

  def set_state(self, state: dict) -> None:
    self.n = int(state["batches_read"])
