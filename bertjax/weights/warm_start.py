"""The one way `--init` weights enter a fresh model: read them, then merge them path by path.

`bertjax pretrain --init-from PATH` and `bertjax finetune --init PATH` both give the trainer a
`load_pretrained(fresh) -> params` (bertjax/train/task.py) built on `merge`; `bertjax
extract-features --init` takes the encoder alone (`encoder_of`).
"""
from __future__ import annotations

import os

import jax
import numpy as np

from bertjax.errors import UserError


def read_params(path: str):
  """PATH -> its param tree (numpy): a pretraining or fine-tuning workdir, one checkpoints/<step>
  dir, a bertjax bundle or a Hugging Face BERT directory."""
  from bertjax import checkpoint  # noqa: PLC0415 (Orbax: only for workdirs)
  from bertjax.weights import bundle  # noqa: PLC0415
  if os.path.isdir(os.path.join(path, checkpoint.CHECKPOINT_DIR)) or os.path.isdir(
      os.path.join(path, "state")):
    loaded, _, _ = checkpoint.restore_params(path)
  else:
    loaded, _, _ = bundle.load_pretrained(path)
  return jax.tree_util.tree_map(np.asarray, loaded)


def encoder_of(params):
  """The encoder of a loaded tree (its "bert" subtree, or the tree itself), as float32 numpy."""
  encoder = params["bert"] if "bert" in params else params
  return jax.tree_util.tree_map(lambda x: np.asarray(x, np.float32), encoder)


def _shapes(tree) -> dict:
  return {jax.tree_util.keystr(p): np.shape(x)
          for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def merge(fresh, loaded, where: str, *, exact_encoder: bool = False):
  """`loaded` into a freshly initialised tree, path by path: a leaf `loaded` holds replaces the
  fresh one (cast to its dtype), a leaf it lacks keeps its fresh value (a new head), a shape
  that differs is one UserError naming `where`.

  exact_encoder: the encoder ("bert") of `loaded` must have exactly the fresh encoder's paths
  and shapes (fine-tuning: a partial encoder is a wrong checkpoint, not a new head).
  """
  if exact_encoder:
    a, b = _shapes(fresh["bert"]), _shapes(loaded["bert"])
    if a != b:
      diff = sorted(set(a.items()) ^ set(b.items()))[:3]
      raise UserError(f"{where}: encoder parameters do not match the model built from its "
                      f"config (first differences: {diff})")
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(loaded)}
  bad = []

  def pick(p, x):
    v = flat.get(jax.tree_util.keystr(p))
    if v is None:
      return x
    if np.shape(v) != tuple(x.shape):
      bad.append(f"{jax.tree_util.keystr(p)} {np.shape(v)} vs {x.shape}")
      return x
    return np.asarray(v).astype(x.dtype)
  out = jax.tree_util.tree_map_with_path(pick, fresh)
  if bad:
    raise UserError(f"{where}: shapes differ from the configured model ({bad[0]}"
                    f"{' and more' if len(bad) > 1 else ''}); use the model config it was "
                    f"trained with")
  return out


def warm_start(path: str):
  """--init-from PATH -> `load_pretrained(fresh) -> params` for the trainer: every leaf PATH
  holds, the rest (heads it lacks) fresh."""
  loaded = read_params(path)
  return lambda fresh: merge(fresh, loaded, f"--init-from {path}")
