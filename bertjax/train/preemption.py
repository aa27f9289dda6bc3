"""Preemption: SIGTERM/SIGINT become a flag the training loop reads once a step, so a run
finishes its step, saves and exits 0; every process stops at the same step."""
from __future__ import annotations

import logging
import signal
import threading
from typing import Optional

import jax
import numpy as np

log = logging.getLogger(__name__)

class PreemptionGuard:
  """SIGTERM/SIGINT → finish the step, save, exit 0. Use as a context manager around the loop:

      with PreemptionGuard() as guard:
        for step in ...:
          state = train_step(...)
          if guard.should_stop(step):
            ckpt.save(step, state, it, force=True); ckpt.wait(); break

  `should_stop(step)` is True on every process at the same step: with one process it is the
  local flag; with several, the flags are all-gathered every `sync_every` steps (a host
  collective, so keep it sparse) and any process's signal stops all. A second SIGINT raises
  KeyboardInterrupt (the impatient Ctrl-C). Previous handlers are restored on exit.
  """

  def __init__(self, signals=(signal.SIGTERM, signal.SIGINT), sync_every: int = 1):
    self.signals = tuple(signals)
    self.sync_every = max(int(sync_every), 1)
    self.signum: Optional[int] = None
    self._previous = {}
    self._stop = False

  def _handler(self, signum, frame):
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt
    self.signum = signum
    log.warning("received %s: will save and stop after the current step",
                signal.Signals(signum).name)

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      for s in self.signals:
        self._previous[s] = signal.signal(s, self._handler)
    return self

  def __exit__(self, *exc):
    for s, h in self._previous.items():
      signal.signal(s, h)
    self._previous.clear()

  @property
  def signal_name(self) -> str:
    return signal.Signals(self.signum).name if self.signum is not None else ""

  def should_stop(self, step: int) -> bool:
    if self._stop:
      return True
    local = self.signum is not None
    if jax.process_count() == 1:
      self._stop = local
    elif step % self.sync_every == 0:
      from jax.experimental import multihost_utils
      flags = multihost_utils.process_allgather(np.int32(local))  # [P]
      self._stop = bool(np.any(flags))
    return self._stop
