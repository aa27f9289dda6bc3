"""Fine-tuning tasks by name: what to read, which head, which metric.

A `TaskSpec` is plain data; `bertjax.tasks.finetune` turns one into a `TrainTask` for the one
trainer, with the behaviour of the task's family (bertjax.tasks.families: features, head,
loss, decoding, metric, prediction files). Readers live beside their format (glue.py, conll.py,
squad.py) and register themselves when the `bertjax.tasks` package is imported, which any
import of this module does first. Nothing here imports JAX.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Optional

from bertjax.errors import UserError

# The family names a task may give; each is one object in bertjax.tasks.families.
FAMILIES = ("classification", "regression", "tagging", "span")


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  family: str
  # (data_dir, split, finetune_cfg) -> examples of the family's reader (see each module).
  read: Callable[[str, str, Any], list]
  # Label strings in id order; None = taken from the training file (sorted), for generic tasks.
  labels: Optional[tuple[str, ...]]
  # (predictions, references) -> {metric: value}; values of each family's own kind.
  metrics: Callable[[Any, Any], dict]
  primary_metric: str
  # Splits evaluated during and after training (MNLI: matched and mismatched).
  eval_splits: tuple[str, ...] = ("dev",)
  # Unlabelled splits predicted at the end (MNLI: matched and mismatched test).
  test_splits: tuple[str, ...] = ("test",)
  description: str = ""


_REGISTRY: dict[str, TaskSpec] = {}


def canonical(name: str) -> str:
  """'SST-2', 'sst2' and 'SST_2' name the same task."""
  return name.lower().replace("-", "").replace("_", "")


def register(spec: TaskSpec) -> TaskSpec:
  if spec.family not in FAMILIES:
    raise ValueError(f"task {spec.name}: unknown family {spec.family}")
  key = canonical(spec.name)
  if key in _REGISTRY:
    raise ValueError(f"task {spec.name} registered twice")
  _REGISTRY[key] = spec
  return spec


def get(name: str) -> TaskSpec:
  key = canonical(name)
  if key not in _REGISTRY:
    close = difflib.get_close_matches(key, list(_REGISTRY), n=1)
    hint = f"; did you mean {_REGISTRY[close[0]].name}?" if close else ""
    raise UserError(f"unknown task {name!r}{hint} (tasks: {', '.join(names())})")
  return _REGISTRY[key]


def names() -> list[str]:
  return sorted(spec.name for spec in _REGISTRY.values())


def split_file(data_dir: str, split: str, fcfg: Any, candidates: tuple[str, ...]) -> str:
  """The file of `split` in `data_dir`: finetune.<split>_file when set, else the first of
  `candidates` that exists. A missing file is a UserError naming where it looked."""
  import os
  override = getattr(fcfg, f"{split}_file", "") if fcfg is not None else ""
  if override:
    path = override if os.path.isabs(override) else os.path.join(data_dir, override)
    if not os.path.isfile(path):
      raise UserError(f"finetune.{split}_file: {path} does not exist")
    return path
  for name in candidates:
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  raise UserError(f"{data_dir}: no {split} file (looked for {', '.join(candidates)}); "
                  f"point --data at the task's folder or set --config.finetune.{split}_file")
