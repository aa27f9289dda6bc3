"""`Checkpointer`: Orbax checkpoints of one training run, saved in the background, restored
onto any mesh, the latest unreadable one set aside (the format and the resume order:
bertjax/checkpoint/__init__.py).

About 400 lines, one class: saving and restoring share the Orbax manager, its writer thread and
the pending-manifest state, so they stay together; the checks they run live beside it
(manifest.py: damage evidence, compat.py: what refuses a resume).
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import shutil
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import bertjax
from bertjax.checkpoint import compat
from bertjax.config import resume_values
from bertjax.checkpoint.data_state import DataStateHandler, DataStateRestore, DataStateSave
from bertjax.checkpoint.manifest import (CorruptCheckpoint, find_damage, unreadable_file,
                                         verify_manifest, write_manifest)
from bertjax.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
TOKENIZER_DIR = "tokenizer"


class CheckpointReadError(UserError):
  """Reading a checkpoint failed for a reason that is not evidence of damage (MemoryError,
  an I/O error): it is left where it is, and the same command resumes from it once the
  cause is gone."""


class CheckpointWriteError(UserError):
  """The filesystem refused a checkpoint (full disk, quota, permissions). The previous
  checkpoint is intact and is where the next run resumes; the CLI prints this as one line."""


@jax.jit
def _all_finite_jit(leaves):
  flags = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _all_finite(state) -> bool:
  """No NaN/Inf in any floating leaf (all processes get the same answer). Host-memory leaves
  that this process holds whole are checked with numpy: the jitted reduction over a state's
  hundreds of leaves compiles for seconds on CPU (2.3 s for MiniLM's fine-tuning state, a
  few % of a short job), the numpy pass reads them in tens of milliseconds. Otherwise one
  fused reduction on the devices."""
  leaves = [x for x in jax.tree.leaves(state)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if all(_on_host(x) for x in leaves):
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
  return bool(_all_finite_jit(leaves))


def _on_host(x) -> bool:
  if not isinstance(x, jax.Array):
    return True                           # numpy values
  return x.is_fully_addressable and all(d.platform == "cpu" for d in x.devices())


def _float(v) -> Optional[float]:
  """A finite float for Orbax's metrics, or None (non-numeric, None, NaN)."""
  try:
    v = float(v)
  except (TypeError, ValueError):
    return None
  return v if np.isfinite(v) else None


def _best_fn(name: str):
  # Loss-like metrics are minimised, the rest (accuracies, F1 ...) maximised.
  minimise = "loss" in name or "perplexity" in name or "error" in name
  return (lambda m: float(m[name])), minimise


class Checkpointer:
  """Orbax checkpoints of one training run in WORKDIR/checkpoints.

  Args:
    workdir: the run's directory.
    every_steps: save when `step % every_steps == 0` (0 = only forced saves).
    keep: keep the last `keep` checkpoints.
    async_save: write in a background thread while training continues (False: `save` returns
      only once the checkpoint is committed — the benchmark's synchronous baseline).
    best_metric: also keep the single best checkpoint by this metric from `save(metrics=...)`
      (minimised if its name contains "loss", else maximised).
    config: the run's ConfigDict (or dict), saved with every checkpoint; a saved state that
      does not fit names the config fields that changed.
    resume_values: {dotted config field: value} a resume must keep
      (`bertjax.config.resume_values`); `restore` compares them with the checkpoint's config
      and names each difference in a `UserError`.
      The saved config is read through the same function, so both sides are normalised alike
      (a field a checkpoint predates, the shapes of a phase neither run has).
    tokenizer_identity: dict identifying the run's tokenizer (`bertjax.data.tokenizer`),
      saved and compared the same way.
    tokenizer_files: its files, copied into WORKDIR/tokenizer/ once, so an export works even
      if the original moves.

  The data iterator: `save` and `restore` take the iterator object itself (`TrainTask.train_iter`,
  e.g. a grain `DatasetIterator`), or None. `save` calls `data_iter.get_state()` at once (a dict
  or bytes); `restore` calls `data_iter.set_state(saved)` in place. Each process saves and
  restores its own iterator's state.
  """

  def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True,
               best_metric: str = "", config=None, resume_values=None,
               tokenizer_identity=None, tokenizer_files=()):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.every_steps = int(every_steps)
    self.keep = int(keep)
    self.async_save = bool(async_save)
    self.best_metric = best_metric
    self.config = compat.to_json(config)
    self.resume_values = compat.to_json(resume_values) or {}
    tokenizer_files = list(tokenizer_files)
    self._tokenizer = None
    self._tokenizer_path = tokenizer_files[0] if tokenizer_files else "<absent>"
    if tokenizer_identity is not None:
      self._tokenizer = dict(tokenizer_identity)
      if tokenizer_files:
        self._tokenizer["files"] = self._copy_tokenizer(tokenizer_files, self._tokenizer)
    self._pending_step: Optional[int] = None    # step whose manifest the writer thread owes
    self._writing: Optional[int] = None         # step of the last save started
    self._failed = False                        # a write was refused: close() must not wait
    self._manifest_error: Optional[BaseException] = None
    self._mngr = self._make_manager()

  # -- setup

  def _make_manager(self) -> ocp.CheckpointManager:
    policies = [ocp.checkpoint_managers.LatestN(n=max(self.keep, 1))]
    if self.best_metric:
      fn, minimise = _best_fn(self.best_metric)
      policies.append(ocp.checkpoint_managers.BestN(
          get_metric_fn=fn, reverse=minimise, n=1, keep_checkpoints_without_metrics=False))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
        # Always the async checkpointer: our manifest is written by its pre-commit callback.
        # A synchronous Checkpointer waits for the commit right after `save`.
        enable_async_checkpointing=True,
        async_options=ocp.AsyncOptions(post_finalization_callback=self._on_written),
        cleanup_tmp_directories=True,
        create=True,
    )
    handlers = {"state": ocp.StandardCheckpointHandler(), "data": DataStateHandler(),
                "meta": ocp.JsonCheckpointHandler()}
    mngr = ocp.CheckpointManager(self.directory, item_handlers=handlers, options=options)
    # Orbax cleans stale tmp directories on a background thread and only joins it in `save`;
    # a run refused before its first save would exit with the thread alive, and its shutdown
    # traceback would print under the one-line error. Join it now (a directory listing).
    getattr(mngr, "_maybe_await_cleanup_tmp_directory", lambda: None)()
    return mngr

  def _copy_tokenizer(self, files: list[str], identity: dict) -> list[str]:
    """Copy the tokenizer files into WORKDIR/tokenizer/<hash>/ once; return relative paths."""
    sub = os.path.join(TOKENIZER_DIR, identity.get("sha256", "unknown")[:12])
    rels = []
    for src in files:
      rel = os.path.join(sub, os.path.basename(src))
      dst = os.path.join(self.workdir, rel)
      if jax.process_index() == 0 and not os.path.isfile(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst + ".tmp")
        os.replace(dst + ".tmp", dst)
      rels.append(rel)
    return rels

  def _on_written(self) -> None:
    """Runs in Orbax's background thread after every item is written, before the rename."""
    step, self._pending_step = self._pending_step, None
    if step is None or jax.process_index() != 0:
      return
    try:
      tmps = glob.glob(os.path.join(self.directory, f"{step}.orbax-checkpoint-tmp*"))
      target = tmps[0] if len(tmps) == 1 else os.path.join(self.directory, str(step))
      write_manifest(target)
    except BaseException as e:  # surfaced by the next wait()/save(); never kill the writer
      self._manifest_error = e

  # -- queries

  def all_steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> Optional[int]:
    """The newest committed step (not yet verified; `restore` falls back if it is unreadable)."""
    return self._mngr.latest_step()

  def should_save(self, step: int) -> bool:
    return self.every_steps > 0 and step > 0 and step % self.every_steps == 0

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  # -- save

  def save(self, step: int, state, data_iter=None, metrics: Optional[dict] = None,
           force: bool = False) -> bool:
    """Start saving `state` (any pytree of jax arrays) and the data position at `step`.

    Saves when `force` or `should_save(step)`; skips (returns False) a step already saved.
    Returns once device arrays are copied to host; files are written in the background.
    """
    step = int(step)
    if not (force or self.should_save(step)):
      return False
    latest = self.latest_step()
    if latest is not None and step <= latest:
      if step < latest:
        log.warning("not saving step %d: the workdir already has step %d", step, latest)
      return False
    self._raise_manifest_error()
    if not _all_finite(state):
      raise FloatingPointError(
          f"step {step}: the train state holds NaN or Inf; not saving it, so the latest "
          f"checkpoint stays step {latest}; lower optim.learning_rate or set "
          f"train.nan_policy=skip, then resume")
    data_state = data_iter.get_state() if data_iter is not None else None
    meta = {
        "step": step,
        "bertjax_version": bertjax.__version__,
        "config": self.config,
        "tokenizer": self._tokenizer,
        "process_count": jax.process_count(),
        "device_count": jax.device_count(),
        "metrics": compat.to_json(metrics),
        "time": time.time(),
    }
    args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=DataStateSave(data_state, bool(getattr(
                                  data_iter, "global_position", False))),
                              meta=ocp.args.JsonSave(meta))
    self._wait_writes()  # the previous save's callback owns _pending_step
    self._pending_step = self._writing = step
    metrics = {k: _float(v) for k, v in (metrics or {}).items()}
    metrics = {k: v for k, v in metrics.items() if v is not None} or None
    try:
      saved = self._mngr.save(step, args=args, metrics=metrics, force=True)
    except Exception as e:
      self._reraise_write_error(e)
    if not self.async_save:
      self.wait()
    return bool(saved)

  def _raise_manifest_error(self) -> None:
    if self._manifest_error is not None:
      e, self._manifest_error = self._manifest_error, None
      raise RuntimeError(f"writing the checkpoint manifest failed: {e}") from e

  def wait(self) -> None:
    """Block until the last save is committed (raises if it failed)."""
    self._wait_writes()
    self._raise_manifest_error()

  def _wait_writes(self) -> None:
    try:
      self._mngr.wait_until_finished()
    except Exception as e:
      self._reraise_write_error(e)

  def _reraise_write_error(self, e: Exception) -> None:
    """A write the filesystem refused (OSError, or Orbax/TensorStore's os_error_code) becomes
    one CheckpointWriteError naming the step and the checkpoint a restart will use."""
    code = re.search(r"os_error_code='?(\d+)", str(e))
    if not (isinstance(e, OSError) or code):
      raise e
    self._failed = True
    reason = os.strerror(int(code.group(1))) if code else (e.strerror or str(e))
    try:
      self._mngr.reload()
      latest = self._mngr.latest_step()
    except Exception:  # the directory itself may be unreadable now
      latest = "unknown"
    raise CheckpointWriteError(
        f"{self.directory}: writing checkpoint step {self._writing} failed "
        f"({reason}); the latest complete checkpoint is step {latest}; free disk space (or "
        f"fix the directory), then run the same command again to resume from it") from None

  @contextlib.contextmanager
  def finish_on_error(self):
    """Around the training loop: when it raises (non-finite loss, a refused write, a second
    Ctrl-C), let the save in flight commit first -- its state was checked finite when it
    started -- instead of letting interpreter shutdown kill Orbax's writer mid-way."""
    try:
      yield
    except BaseException:
      if not self._failed:
        try:
          self.close()
        except Exception as e:  # the original error is the one to report
          log.warning("finishing the checkpoint in flight failed: %s", e)
      raise

  def close(self) -> None:
    try:
      if not self._failed:
        self.wait()
    finally:
      self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  # -- restore

  def read_meta(self, step: int) -> dict:
    path = os.path.join(self.step_dir(step), "meta", "metadata")
    with open(path) as f:
      return json.load(f)

  def check_compatible(self, step: int) -> dict:
    """Compare a checkpoint's config and tokenizer with this run's; UserError lists every diff."""
    meta = self.read_meta(step)
    diffs = []
    if self.resume_values and meta.get("config") is not None:
      diffs += compat.value_diffs(compat.to_json(resume_values(meta["config"])),
                                  self.resume_values)
    diffs += compat.tokenizer_diffs(meta.get("tokenizer"), self._tokenizer, self._tokenizer_path)
    if diffs:
      raise UserError(
          f"{self.step_dir(step)} was written by a run with a different setup: "
          + "; ".join(diffs)
          + f"; resume with the checkpoint's values, or use a new workdir with --init-from "
            f"{self.workdir} to start from its weights")
    return meta

  def restore(self, abstract_state, data_iter=None, step: Optional[int] = None):
    """Restore into `abstract_state` and set `data_iter`'s position; returns (state, step).

    `abstract_state` is the pytree the trainer would build, as jax.ShapeDtypeStruct leaves with
    `.sharding` for the *current* mesh (`jax.eval_shape` + shardings): a checkpoint written on
    8 devices restores onto 2, 1 or another mesh. With `step=None` the latest readable
    checkpoint is used; unreadable newer ones are moved to WORKDIR/checkpoints_corrupt/ with a
    warning. Config or tokenizer differences raise UserError before anything is read.
    """
    self.wait()
    if step is not None:
      return self._restore_step(int(step), abstract_state, data_iter), int(step)
    steps = self.all_steps()
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    for i, s in enumerate(reversed(steps)):
      try:
        return self._restore_step(s, abstract_state, data_iter), s
      except UserError:
        raise
      except Exception as e:
        # Only evidence moves a checkpoint aside (a failed checksum, a missing item, JSON that
        # does not parse); any other failure (MemoryError, EIO ...) leaves it in place.
        damage = (str(e) if isinstance(e, CorruptCheckpoint)
                  else unreadable_file(e) or self._damage(s))
        if damage is None:
          raise CheckpointReadError(
              f"{self.step_dir(s)}: reading checkpoint step {s} failed ({type(e).__name__}: "
              f"{str(e)[:200]}); its files pass their checks, so it was left in place; fix "
              f"the cause (memory, disk, filesystem) and run the same command again") from None
        older = steps[len(steps) - 2 - i] if i + 1 < len(steps) else None
        log.warning("checkpoint %s is unreadable (%s); %s", self.step_dir(s), damage[:300],
                    f"falling back to step {older}" if older is not None else "none left")
        self._set_aside(s)
    raise UserError(f"{self.directory}: no readable checkpoint (moved to {CORRUPT_DIR}/); "
                    f"start a new workdir or restore a backup")

  def _damage(self, step: int) -> Optional[str]:
    """`find_damage` on process 0; every process gets its verdict."""
    verdict = ""
    if jax.process_index() == 0:
      try:
        verdict = find_damage(self.step_dir(step)) or ""
      except OSError:  # could not even look: no evidence
        verdict = ""
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      if not int(multihost_utils.broadcast_one_to_all(np.int32(bool(verdict)))):
        return None
      return verdict or f"{self.step_dir(step)}: damaged (found by process 0)"
    return verdict or None

  def check_structure(self, step: int, abstract_state) -> None:
    """The saved state's leaves (paths and shapes) must be this run's, or a UserError names
    what differs and the config fields that changed -- before anything is read or moved."""
    tree = self._mngr.item_metadata(step)["state"]  # global shapes, read from metadata only
    diff = compat.structure_diff(tree.tree if hasattr(tree, "tree") else tree, abstract_state,
                                 self.read_meta(step).get("config"), self.config)
    if diff is not None:
      raise UserError(
          f"{self.step_dir(step)}: the saved train state does not match this run's{diff}; "
          f"resume with the checkpoint's values, or use a new workdir with --init-from "
          f"{self.workdir} to start from its weights")

  def _verify(self, step: int) -> None:
    """Process 0 reads and checks the files; the others take its verdict (one read, not N)."""
    if jax.process_count() == 1:
      return verify_manifest(self.step_dir(step))
    from jax.experimental import multihost_utils
    err = ""
    if jax.process_index() == 0:
      try:
        verify_manifest(self.step_dir(step))
      except CorruptCheckpoint as e:
        err = str(e)
    bad = multihost_utils.broadcast_one_to_all(np.int32(bool(err)))
    if int(bad):
      raise CorruptCheckpoint(err or f"{self.step_dir(step)}: failed verification on process 0")

  def _restore_step(self, step: int, abstract_state, data_iter):
    self._verify(step)
    self.check_compatible(step)
    self.check_structure(step, abstract_state)
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iter is not None:
      items["data"] = DataStateRestore()
    restored = self._mngr.restore(step, args=ocp.args.Composite(**items))
    if data_iter is not None:
      if restored["data"] is None:
        raise UserError(f"{self.step_dir(step)} holds no data position (saved without an "
                        f"iterator); start a new workdir with --init-from instead")
      data_iter.set_state(restored["data"])
    return restored["state"]

  def _set_aside(self, step: int) -> None:
    if jax.process_index() == 0:
      dst = os.path.join(self.workdir, CORRUPT_DIR, f"{step}-{int(time.time())}")
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.replace(self.step_dir(step), dst)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"bertjax_set_aside_{step}")
    self._mngr.reload()
