"""Is a checkpoint this run's? The differences that refuse a resume, each named in one sentence.

Three checks, all before anything is read or moved: the values of the fields a resume must keep
(`bertjax.config.RESUME_KEYS`, handed in by the caller), the tokenizer's identity, and the saved
train state's leaves (paths and shapes, read from Orbax's metadata).
"""
from __future__ import annotations

import json
from typing import Optional

import jax
import orbax.checkpoint as ocp

# Config sections whose fields shape the train state: named when the saved state differs.
_STATE_SECTIONS = ("model", "optim", "finetune")


def to_json(value) -> Optional[dict]:
  """A ConfigDict or dict -> plain JSON types (what a checkpoint's meta holds), or None."""
  if value is None:
    return None
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  return json.loads(json.dumps(value, default=str))


def value_diffs(saved: dict, values: dict) -> list[str]:
  """'key: checkpoint X, now Y' for each of `values` ({dotted key: this run's value}) that
  `saved` (the checkpoint's, the same form) holds otherwise."""
  diffs = []
  for key, new in values.items():
    old = saved.get(key, "<absent>")
    if old != new:
      diffs.append(f"{key}: checkpoint {old!r}, now {new!r}")
  return diffs


def tokenizer_diffs(old_tok: Optional[dict], new_tok: Optional[dict], path) -> list[str]:
  """The identity fields (file, sha256, kind ...) in which two tokenizers differ."""
  diffs = []
  if old_tok and new_tok:
    for key in sorted((set(old_tok) | set(new_tok)) - {"files"}):
      old, new = old_tok.get(key, "<absent>"), new_tok.get(key, "<absent>")
      if old != new:
        if key == "sha256":
          old, new = f"{str(old)[:12]}...", f"{str(new)[:12]}..."
        diffs.append(f"tokenizer {key}: checkpoint {old!r}, now {new!r} "
                     f"(data.tokenizer={path})")
  return diffs


def is_leaf_metadata(x) -> bool:
  return isinstance(x, ocp.metadata.ArrayMetadata) or (
      hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list, tuple)))


def _leaf_shapes(tree) -> dict:
  """{path tuple of names: shape} of the array leaves of a state (abstract or Orbax metadata;
  tuples and lists give "0", "1" ... as dict keys do)."""
  return {tuple(_key_name(k) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf_metadata)[0]}


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _flat_config(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in (d or {}).items():
    if isinstance(v, dict):
      out.update(_flat_config(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def structure_diff(saved_tree, abstract_state, saved_config: Optional[dict],
                   config: Optional[dict]) -> Optional[str]:
  """None when the saved state's leaves (paths, shapes) are this run's; else what differs, with
  the config fields that changed and shape the state, as the body of one error."""
  saved = _leaf_shapes(saved_tree)
  now = _leaf_shapes(abstract_state)
  if saved == now:
    return None

  def names(paths):
    paths = sorted("/".join(p) for p in paths)
    return ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
  parts = []
  if saved.keys() - now.keys():
    parts.append(f"only in the checkpoint: {names(saved.keys() - now.keys())}")
  if now.keys() - saved.keys():
    parts.append(f"only in this run: {names(now.keys() - saved.keys())}")
  shapes = [p for p in saved.keys() & now.keys() if saved[p] != now[p]]
  if shapes:
    p = sorted(shapes)[0]
    parts.append(f"shapes differ: {'/'.join(p)} {list(saved[p])} vs {list(now[p])}"
                 + (f" and {len(shapes) - 1} more" if len(shapes) > 1 else ""))
  old_cfg = _flat_config(saved_config or {})
  new_cfg = _flat_config(config or {})
  changed = [f"{k}: checkpoint {old_cfg.get(k, '<absent>')!r}, now {new_cfg.get(k, '<absent>')!r}"
             for k in sorted(old_cfg.keys() | new_cfg.keys())
             if k.split(".")[0] in _STATE_SECTIONS
             and old_cfg.get(k, "<absent>") != new_cfg.get(k, "<absent>")]
  return ((f" (config changed: {'; '.join(changed)})" if changed else "")
          + f": {'; '.join(parts)}")
