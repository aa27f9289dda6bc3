"""The data-iterator item of a checkpoint: one JSON file per process, as grain's handler writes."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import orbax.checkpoint as ocp

from bertjax.errors import UserError


@dataclasses.dataclass
class DataStateSave(ocp.args.CheckpointArgs):
  state: Any  # JSON-able (dict from grain DatasetIterator) or bytes (grain DataLoaderIterator)
  global_position: bool = False  # the same state on every process, valid for any process count


@dataclasses.dataclass
class DataStateRestore(ocp.args.CheckpointArgs):
  pass


class DataStateHandler(ocp.CheckpointHandler):
  """Every process writes its own iterator state: process_<i>-of-<n>.json (as grain's handler).

  The state is captured by `Checkpointer.save` at call time, so the background write can never
  see a later position of the iterator. An iterator whose position is global (the same on
  every process: bertjax's pretraining pipeline counts examples of the global stream) says so
  with `global_position = True`; its state then restores on any number of processes.
  """

  def save(self, directory, args: DataStateSave):
    state = args.state
    if isinstance(state, (bytes, bytearray)):
      payload = {"kind": "bytes", "state": bytes(state).decode()}
    else:
      payload = {"kind": "json", "state": state}
    payload["global"] = bool(args.global_position)
    i, n = jax.process_index(), jax.process_count()
    path = directory / f"process_{i}-of-{n}.json"
    path.write_text(json.dumps(payload))

  def restore(self, directory, args: DataStateRestore = None):
    i, n = jax.process_index(), jax.process_count()
    path = directory / f"process_{i}-of-{n}.json"
    if not path.exists():
      saved = sorted(p for p in directory.iterdir() if p.name.startswith("process_"))
      payloads = [json.loads(p.read_text()) for p in saved]
      # Another process count: a global position (identical on every saving process) is
      # valid for this run too; a per-process one cannot be split or merged.
      if payloads and all(p.get("global") and p == payloads[0] for p in payloads):
        return _decode(payloads[0])
      raise UserError(
          f"{directory}: the data position was saved by other processes "
          f"({', '.join(p.name for p in saved)}) and is per process, this run is process {i} "
          f"of {n}; resume with the same number of processes, or start a new workdir with "
          f"--init-from {directory.parent.parent.parent} (params only)")
    return _decode(json.loads(path.read_text()))
  def metadata(self, directory):
    return None

  def finalize(self, directory):
    pass

  def close(self):
    pass


def _decode(payload: dict):
  return payload["state"].encode() if payload["kind"] == "bytes" else payload["state"]


ocp.args.register_with_handler(DataStateHandler, for_save=True)(DataStateSave)
ocp.args.register_with_handler(DataStateHandler, for_restore=True)(DataStateRestore)
