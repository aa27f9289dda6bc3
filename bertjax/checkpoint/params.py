"""The params of one checkpoint, without knowing its optimizer (export, --init-from)."""
from __future__ import annotations

import logging
import os
from typing import Optional

import jax
import orbax.checkpoint as ocp

from bertjax.checkpoint.checkpointer import CHECKPOINT_DIR
from bertjax.checkpoint.compat import is_leaf_metadata
from bertjax.checkpoint.data_state import DataStateHandler
from bertjax.checkpoint.manifest import verify_manifest
from bertjax.errors import UserError

log = logging.getLogger(__name__)


def restore_params(workdir: str, step: Optional[int] = None, sharding=None):
  """Params of one checkpoint, without knowing the optimizer: returns (params, meta, step).

  `workdir` is a run's workdir (latest readable step unless `step`) or one step directory.
  Params come back as arrays on `sharding` (default: the first local device).
  """
  workdir = os.path.abspath(workdir)
  if os.path.isdir(os.path.join(workdir, "state")) and os.path.isdir(os.path.join(workdir, "meta")):
    ckpt_root, step = os.path.dirname(workdir), int(os.path.basename(workdir))
  else:
    ckpt_root = os.path.join(workdir, CHECKPOINT_DIR)
  if not os.path.isdir(ckpt_root):
    raise UserError(f"{workdir}: no checkpoints here (expected {ckpt_root}); pass a "
                    f"pretraining workdir or one of its checkpoints/<step> directories")
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # The PyTree handler reads what the Standard one wrote, and can restore a subtree only.
  handlers = {"state": ocp.PyTreeCheckpointHandler(), "meta": ocp.JsonCheckpointHandler(),
              "data": DataStateHandler()}
  with ocp.CheckpointManager(ckpt_root, item_handlers=handlers,
                             options=ocp.CheckpointManagerOptions(
                                 read_only=True, create=False, save_interval_steps=0)) as mngr:
    steps = sorted(mngr.all_steps())
    if not steps:
      raise UserError(f"{ckpt_root}: holds no complete checkpoint")
    if step is not None and step not in steps:
      raise UserError(f"{ckpt_root}: no checkpoint at step {step}; it has steps {steps}")
    candidates = [step] if step is not None else list(reversed(steps))
    last_err = None
    for s in candidates:
      try:
        verify_manifest(os.path.join(ckpt_root, str(s)))
        tree = mngr.item_metadata(s)["state"]
        tree = tree.tree if hasattr(tree, "tree") else tree
        if not isinstance(tree, dict) or "params" not in tree:
          raise UserError(f"{ckpt_root}/{s}: the saved state has no 'params' entry")
        item = {"params": jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
            tree["params"], is_leaf=is_leaf_metadata)}
        restore_args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding), item)
        out = mngr.restore(s, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                         partial_restore=True),
            meta=ocp.args.JsonRestore()))
        return out["state"]["params"], out["meta"], s
      except UserError:
        raise
      except Exception as e:
        last_err = e
        if step is None:
          log.warning("checkpoint %s/%d is unreadable (%s); trying the previous one",
                      ckpt_root, s, e)
    raise UserError(f"{ckpt_root}: no readable checkpoint ({last_err})")
