"""Checkpoints: exact resume, preemption safety, restore onto any mesh, params for export.

Layout of a workdir (WORKDIR/checkpoints is an Orbax `CheckpointManager` directory):

  WORKDIR/checkpoints/<step>/state/     the train-state pytree (params, opt_state, step, rng ...)
  WORKDIR/checkpoints/<step>/data/      each process's data-iterator state, process_I-of-N.json
  WORKDIR/checkpoints/<step>/meta/      JSON: config, tokenizer identity, bertjax version, metrics
  WORKDIR/checkpoints/<step>/manifest.json  size + CRC32 of every file, written before the commit
  WORKDIR/tokenizer/<sha256[:12]>/      a copy of the tokenizer files, so export works after the
                                        original moves
  WORKDIR/checkpoints_corrupt/<step>/   a latest checkpoint found unreadable, moved aside

Resume order (what `bertjax pretrain` does when it starts; the trainer follows it):
  1. the latest *complete and readable* checkpoint in WORKDIR/checkpoints — params, optimizer
     state, step, RNG and the data position, so the run continues bit-for-bit as if it had never
     stopped. A latest checkpoint that fails its manifest or does not restore is moved to
     WORKDIR/checkpoints_corrupt/ with a warning and the previous one is used;
  2. else `--init-from PATH` (a workdir, one checkpoint step dir, a bertjax bundle or a Hugging
     Face dir): params only, a fresh optimizer and step 0;
  3. else a fresh initialisation from `train.seed`.
Before (1) restores anything, the saved config and tokenizer are compared with the current ones
(`RESUME_KEYS`) and every difference is named in one `UserError`.

Atomicity: Orbax writes each step into `<step>.orbax-checkpoint-tmp-*` and renames it when every
item (and our manifest) is written, so a save killed at any moment never becomes the latest;
leftover tmp dirs are ignored and removed at the next start.

Asynchrony: `save()` blocks only while device arrays are copied to host memory (and while the
previous save, if still writing, finishes); the files are written by a background thread while
training continues. `wait()` blocks until the last save is committed.

Preemption: `PreemptionGuard` turns SIGTERM/SIGINT into a flag; the loop asks
`guard.should_stop(step)` every step, and every process gets the same answer at the same step
(an all-gather every `sync_every` steps on several processes), so all save the same step.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
import zlib
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

import bertjax
from bertjax.data.tokenizer import file_sha256
from bertjax.errors import UserError

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "checkpoints_corrupt"
TOKENIZER_DIR = "tokenizer"
MANIFEST = "manifest.json"
# Files Orbax may still touch after our manifest is written (commit markers, step metadata).
_UNHASHED = {MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA"}

# Config fields a resumed run must share with its checkpoint: they fix the parameter shapes,
# the optimizer-state structure or the meaning of the saved data position. Everything else
# (num_steps, learning-rate schedule, logging, dtype, remat, device count ...) may change.
RESUME_KEYS = (
    "model.vocab_size", "model.hidden_size", "model.num_hidden_layers",
    "model.num_attention_heads", "model.intermediate_size", "model.max_position_embeddings",
    "model.type_vocab_size", "model.hidden_act", "model.fused_qkv",
    "data.corpus_format", "data.do_lower_case", "data.heldout_fraction", "data.max_seq_length",
    "data.max_predictions_per_seq", "data.masked_lm_prob", "data.short_seq_prob",
    "data.whole_word_masking", "data.seed",
    "train.global_batch_size", "train.seed", "train.phase2_start",
    "train.phase2_max_seq_length", "train.phase2_max_predictions_per_seq",
    "train.phase2_global_batch_size",
    "optim.name",
)


# --------------------------------------------------------------------------- small helpers

def _to_dict(config) -> Optional[dict]:
  if config is None:
    return None
  if hasattr(config, "to_dict"):
    config = config.to_dict()
  return json.loads(json.dumps(config, default=str))  # plain JSON types only


def _get(d: dict, dotted: str):
  for part in dotted.split("."):
    if not isinstance(d, dict) or part not in d:
      return "<absent>"
    d = d[part]
  return d


def tokenizer_files(path: str) -> list[str]:
  """The files that make up a tokenizer: a SentencePiece .model (+ its .vocab) or a vocab.txt."""
  files = [path]
  root, ext = os.path.splitext(path)
  if ext == ".model" and os.path.isfile(root + ".vocab"):
    files.append(root + ".vocab")
  return files


def tokenizer_identity(path: str) -> dict:
  """What identifies a tokenizer across machines: its file name and the SHA-256 of its bytes."""
  return {"file": os.path.basename(path), "sha256": file_sha256(path)}


_tokenizer_identity = tokenizer_identity  # the Checkpointer argument shadows the name


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      crc = zlib.crc32(chunk, crc)
  return crc


def _list_files(root: str) -> list[str]:
  out = []
  for dirpath, _, names in os.walk(root):
    for n in names:
      rel = os.path.relpath(os.path.join(dirpath, n), root)
      if os.path.basename(rel) not in _UNHASHED:
        out.append(rel)
  return sorted(out)


def write_manifest(step_dir: str) -> None:
  """Record size and CRC32 of every file of a checkpoint (atomic: tmp file + rename)."""
  files = {rel: {"size": os.path.getsize(os.path.join(step_dir, rel)),
                 "crc32": _crc32(os.path.join(step_dir, rel))} for rel in _list_files(step_dir)}
  tmp = os.path.join(step_dir, MANIFEST + ".tmp")
  with open(tmp, "w") as f:
    json.dump({"files": files}, f)
  os.replace(tmp, os.path.join(step_dir, MANIFEST))


def verify_manifest(step_dir: str) -> None:
  """Raise `CorruptCheckpoint` if a file listed in the manifest is missing, truncated or altered.

  A checkpoint without a manifest (killed between commit and manifest, or written by another
  tool) is not rejected here; a damaged one then fails in the restore itself.
  """
  path = os.path.join(step_dir, MANIFEST)
  if not os.path.isfile(path):
    return
  try:
    with open(path) as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError) as e:
    raise CorruptCheckpoint(f"{path}: unreadable manifest ({e})") from None
  for rel, want in files.items():
    full = os.path.join(step_dir, rel)
    if not os.path.isfile(full):
      raise CorruptCheckpoint(f"{full}: missing")
    size = os.path.getsize(full)
    if size != want["size"]:
      raise CorruptCheckpoint(f"{full}: {size} bytes, expected {want['size']} (truncated?)")
    if _crc32(full) != want["crc32"]:
      raise CorruptCheckpoint(f"{full}: checksum mismatch (corrupted)")


class CorruptCheckpoint(Exception):
  """A checkpoint on disk that cannot be trusted (bad manifest, missing or altered file)."""


# Files of a checkpoint that hold JSON (Orbax's metadata, our meta and data items): one that
# does not parse is evidence of damage, as a failed checksum is.
_JSON_FILES = {"_CHECKPOINT_METADATA", "_METADATA", "_sharding", "metadata", MANIFEST}


def find_damage(step_dir: str) -> Optional[str]:
  """Evidence that a checkpoint is damaged, as one sentence, or None when its files pass.

  Evidence is: a manifest entry that is missing, truncated or fails its CRC32; an item
  directory (state, meta) that is absent; a JSON file that is empty or does not parse. An
  OSError while looking (EIO, a stale network mount) is *not* evidence: the files may be fine,
  so the caller leaves the checkpoint where it is.
  """
  try:
    verify_manifest(step_dir)
  except CorruptCheckpoint as e:
    return str(e)
  for item in ("state", os.path.join("meta", "metadata")):
    if not os.path.exists(os.path.join(step_dir, item)):
      return f"{os.path.join(step_dir, item)}: missing"
  for dirpath, _, names in os.walk(step_dir):
    for n in names:
      if n in _JSON_FILES or n.endswith(".json"):
        path = os.path.join(dirpath, n)
        with open(path, "rb") as f:
          raw = f.read()
        try:
          json.loads(raw)
        except ValueError as e:
          return f"{path}: not valid JSON ({e})"
  return None


def _leaf_shapes(tree) -> dict:
  """{path tuple of names: shape} of the array leaves of a state (abstract or Orbax metadata;
  tuples and lists give "0", "1" ... as dict keys do)."""
  return {tuple(_key_name(k) for k in path): tuple(x.shape)
          for path, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_is_leaf_metadata)[0]}


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


def _unreadable_file(e: BaseException) -> Optional[str]:
  """Evidence in a restore error itself: TensorStore read a file shorter than its index says
  (OUT_OF_RANGE) or one failing its own checks (DATA_LOSS). Other statuses (an I/O error,
  UNAVAILABLE ...) are not evidence."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    m = re.search(r"\b(?:DATA_LOSS|OUT_OF_RANGE): [^\n]{0,300}", str(e))
    if m and not isinstance(e, OSError):
      return m.group(0)
    e = e.__cause__ or e.__context__
  return None


class CheckpointReadError(UserError):
  """Reading a checkpoint failed for a reason that is not evidence of damage (MemoryError,
  an I/O error): it is left where it is, and the same command resumes from it once the
  cause is gone."""


class CheckpointWriteError(UserError):
  """The filesystem refused a checkpoint (full disk, quota, permissions). The previous
  checkpoint is intact and is where the next run resumes; the CLI prints this as one line."""


# --------------------------------------------------------- data-iterator state, one file a process

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


# ------------------------------------------------------------------------------- Checkpointer

def _is_leaf_metadata(x) -> bool:
  return isinstance(x, ocp.metadata.ArrayMetadata) or (
      hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, (dict, list, tuple)))


@jax.jit
def _all_finite_jit(leaves):
  flags = [jnp.all(jnp.isfinite(x)) for x in leaves]
  return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def _all_finite(state) -> bool:
  """No NaN/Inf in any floating leaf (one fused reduction; all processes get the same answer)."""
  leaves = [x for x in jax.tree.leaves(state)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  return bool(_all_finite_jit(leaves))


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
    config: the run's ConfigDict (or dict). Saved with every checkpoint; `restore` compares its
      `RESUME_KEYS` with the checkpoint's and names each difference in a `UserError`.
    tokenizer_identity: dict identifying the tokenizer; default `tokenizer_identity(path)` of
      `config.data.tokenizer` when that file exists. Its files are copied into
      WORKDIR/tokenizer/ once, so `export_bundle` works even if the original moves.

  The data iterator: `save` and `restore` take the iterator object itself (`TrainTask.train_iter`,
  e.g. a grain `DatasetIterator`), or None. `save` calls `data_iter.get_state()` at once (a dict
  or bytes); `restore` calls `data_iter.set_state(saved)` in place. Each process saves and
  restores its own iterator's state.
  """

  def __init__(self, workdir: str, *, every_steps: int, keep: int, async_save: bool = True,
               best_metric: str = "", config=None, tokenizer_identity=None):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, CHECKPOINT_DIR)
    self.every_steps = int(every_steps)
    self.keep = int(keep)
    self.async_save = bool(async_save)
    self.best_metric = best_metric
    self.config = _to_dict(config)
    self._tokenizer = None
    tok_path = _get(self.config, "data.tokenizer") if self.config else "<absent>"
    if tokenizer_identity is None and isinstance(tok_path, str) and os.path.isfile(tok_path):
      tokenizer_identity = _tokenizer_identity(tok_path)
    if tokenizer_identity is not None:
      self._tokenizer = dict(tokenizer_identity)
      if isinstance(tok_path, str) and os.path.isfile(tok_path):
        self._tokenizer["files"] = self._copy_tokenizer(tok_path, self._tokenizer)
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

  def _copy_tokenizer(self, path: str, identity: dict) -> list[str]:
    """Copy the tokenizer files into WORKDIR/tokenizer/<hash>/ once; return relative paths."""
    sub = os.path.join(TOKENIZER_DIR, identity.get("sha256", "unknown")[:12])
    rels = []
    for src in tokenizer_files(path):
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
        "metrics": _to_dict(metrics),
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
    if self.config is not None and meta.get("config") is not None:
      for key in RESUME_KEYS:
        old, new = _get(meta["config"], key), _get(self.config, key)
        if old != new:
          diffs.append(f"{key}: checkpoint {old!r}, now {new!r}")
    old_tok, new_tok = meta.get("tokenizer"), self._tokenizer
    if old_tok and new_tok:
      for key in sorted((set(old_tok) | set(new_tok)) - {"files"}):
        old, new = old_tok.get(key, "<absent>"), new_tok.get(key, "<absent>")
        if old != new:
          if key == "sha256":
            old, new = f"{str(old)[:12]}...", f"{str(new)[:12]}..."
          diffs.append(f"tokenizer {key}: checkpoint {old!r}, now {new!r} "
                       f"(data.tokenizer={_get(self.config or {}, 'data.tokenizer')})")
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
                  else _unreadable_file(e) or self._damage(s))
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
    saved = _leaf_shapes(tree.tree if hasattr(tree, "tree") else tree)
    now = _leaf_shapes(abstract_state)
    if saved == now:
      return

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
    old_cfg = _flat_config((self.read_meta(step).get("config") or {}))
    new_cfg = _flat_config(self.config or {})
    changed = [f"{k}: checkpoint {old_cfg.get(k, '<absent>')!r}, now {new_cfg.get(k, '<absent>')!r}"
               for k in sorted(old_cfg.keys() | new_cfg.keys())
               if k.split(".")[0] in ("model", "optim", "finetune")
               and old_cfg.get(k, "<absent>") != new_cfg.get(k, "<absent>")]
    raise UserError(
        f"{self.step_dir(step)}: the saved train state does not match this run's"
        + (f" (config changed: {'; '.join(changed)})" if changed else "")
        + f": {'; '.join(parts)}; resume with the checkpoint's values, or use a new workdir with --init-from "
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


# ------------------------------------------------------------------------ params-only restore

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
            tree["params"], is_leaf=_is_leaf_metadata)}
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


def export_bundle(workdir: str, out_dir: str, step: Optional[int] = None,
                  fmt: str = "bertjax", overwrite: bool = False) -> str:
  """Write a params-only bundle (weights, model config, tokenizer) for fine-tuning.

  fmt="bertjax": `bertjax.bundle.save_bundle` layout; fmt="hf": Hugging Face BertForPreTraining
  layout via `bertjax.interop.save_hf`. Returns the absolute `out_dir`.
  """
  return export_checkpoint(workdir, out_dir, step, fmt, overwrite)[0]


def export_checkpoint(workdir: str, out_dir: str, step: Optional[int] = None,
                      fmt: str = "bertjax", overwrite: bool = False) -> tuple[str, int]:
  """`export_bundle` that also returns the step it exported (the latest readable by default)."""
  import ml_collections
  if fmt not in ("bertjax", "hf"):
    raise UserError(f"--format {fmt}: use bertjax or hf")
  params, meta, step = restore_params(workdir, step)
  params = jax.tree.map(np.asarray, params)
  cfg = meta.get("config") or {}
  if "model" not in cfg:
    raise UserError(f"{workdir}: checkpoint step {step} has no model config in its metadata")
  model_cfg = ml_collections.ConfigDict(cfg["model"])
  tok = meta.get("tokenizer") or {}
  root = workdir if os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)) else \
      os.path.dirname(os.path.dirname(os.path.abspath(workdir)))
  files = [os.path.join(root, rel) for rel in tok.get("files", [])]
  missing = [f for f in files if not os.path.isfile(f)]
  if not files or missing:
    original = _get(cfg, "data.tokenizer")
    if isinstance(original, str) and os.path.isfile(original):
      files = tokenizer_files(original)
    else:
      raise UserError(f"{workdir}: the tokenizer of step {step} is not in "
                      f"{os.path.join(root, TOKENIZER_DIR)} nor at {original}; "
                      f"copy it back to {original}")
  lower = _get(cfg, "data.do_lower_case")
  lower = lower if isinstance(lower, bool) else True
  bundle_meta = {"source": os.path.abspath(workdir), "step": step, "do_lower_case": lower,
                 "bertjax_version": meta.get("bertjax_version"),
                 "tokenizer_sha256": tok.get("sha256")}
  if fmt == "bertjax":
    from bertjax import bundle
    bundle.save_bundle(out_dir, params, model_cfg, files, meta=bundle_meta, overwrite=overwrite)
  else:
    from bertjax import interop
    interop.save_hf(params, model_cfg, out_dir, files, do_lower_case=lower, overwrite=overwrite)
  return os.path.abspath(out_dir), step


# ------------------------------------------------------------------------------- preemption

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
