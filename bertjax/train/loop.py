"""The one trainer: `train(task, cfg, workdir) -> summary`, for pretraining and fine-tuning.

Top to bottom:
  1. mesh over every device of every process; config checks before anything compiles;
  2. optimizer (config.optim) and the state's shapes/shardings from one example batch;
  3. resume order (see bertjax.checkpoint): the latest readable checkpoint in WORKDIR (params,
     optimizer, step, RNG key, data position), else `task.load_pretrained` (--init-from: params
     only), else a fresh init from train.seed;
  4. the loop: place this process's batch shard, one jitted step (compiled once per phase),
     log every train.log_every steps, evaluate every train.eval_every, checkpoint every
     checkpoint.every_steps, stop cleanly on SIGTERM/SIGINT (finish the step, save, return);
  5. a final checkpoint, evaluation and curves; the summary dict is returned.
Only process 0 writes metrics, TensorBoard, curves and the progress bar.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Optional

import jax
import numpy as np

from bertjax import sharding as shd
from bertjax.checkpoint import Checkpointer
from bertjax.config import resume_values, validate
from bertjax.data.tokenizer import checkpoint_tokenizer
from bertjax.errors import UserError
from bertjax.optim import make_optimizer
from bertjax.train import metrics as mlib
from bertjax.train.preemption import PreemptionGuard
from bertjax.train.state import abstract_state, create_state
from bertjax.train.step import combine_host, make_eval_step, make_train_step
from bertjax.train.task import TrainTask

log = logging.getLogger(__name__)


class PhasedData:
  """The training iterator across phases, with one get_state()/set_state() for checkpoints."""

  def __init__(self, task: TrainTask, phase2_start: int):
    self.task, self.phase2_start = task, phase2_start
    self.phase, self.it = 0, task.train_iter

  def ensure_phase(self, step: int) -> bool:
    """Switch to phase 2 at its first step; True when this call switched."""
    if self.phase == 0 and self.phase2_start and step >= self.phase2_start:
      if self.task.make_phase2_iter is None:
        raise UserError("train.phase2_start is set but this task has no second phase; "
                        "set train.phase2_start=0")
      self.phase, self.it = 1, self.task.make_phase2_iter()
      return True
    return False

  def __next__(self):
    return next(self.it)

  @property
  def global_position(self) -> bool:  # see bertjax.checkpoint.DataStateHandler
    return bool(getattr(self.it, "global_position", False))

  def get_state(self):
    s = self.it.get_state()
    if isinstance(s, (bytes, bytearray)):
      return {"phase": self.phase, "bytes": bytes(s).decode()}
    return {"phase": self.phase, "state": s}

  def set_state(self, saved):
    if saved.get("phase", 0) == 1 and self.phase == 0:
      self.phase, self.it = 1, self.task.make_phase2_iter()
    self.it.set_state(saved["bytes"].encode() if "bytes" in saved else saved["state"])


def _pad_rows(batch: dict, rows: int) -> dict:
  """Pad a short (last) evaluation batch with all-zero rows up to `rows`."""
  n = next(iter(batch.values())).shape[0]
  if n == rows:
    return batch
  return {k: np.concatenate([v, np.zeros((rows - n,) + v.shape[1:], v.dtype)]) for k, v in
          batch.items()}


def _progress(total: int, initial: int, enabled: bool):
  """A tqdm bar on a terminal; elsewhere (logs, CI) plain lines are printed at log steps."""
  import sys
  if not enabled or not sys.stderr.isatty():
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")


def train(task: TrainTask, cfg, workdir: str, *, mesh=None, progress: bool = True) -> dict:
  """Train `task` per `cfg` in `workdir` (resuming from its checkpoints); returns a summary."""
  t0 = time.time()
  t = cfg.train
  mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
  num_devices = shd.mesh_size(mesh)
  validate(cfg, num_devices)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)

  # 2. optimizer and state layout (shapes come from the first batch; it is trained on, not lost)
  tx, schedule = make_optimizer(cfg.optim, t.num_steps, task.frozen)
  data = PhasedData(task, t.phase2_start)
  try:
    first = next(data)
  except StopIteration:
    raise UserError(f"{task.name}: the training data yielded no batch") from None
  abstract, shardings = abstract_state(task.init_params, tx, t.seed, first, mesh)

  # 3. resume order
  tok_identity, tok_files = checkpoint_tokenizer(cfg.data.tokenizer, task.tokenizer_identity)
  ckpt = Checkpointer(workdir, every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                      async_save=cfg.checkpoint.async_save,
                      best_metric=cfg.checkpoint.best_metric, config=cfg,
                      resume_values=resume_values(cfg), tokenizer_identity=tok_identity,
                      tokenizer_files=tok_files)
  start, pending, resumed_from = 0, first, None
  # A refused resume or --init (UserError) closes Orbax's manager before the error propagates:
  # left open, its background thread could die noisily in interpreter shutdown (a traceback
  # under the one-line error, seen intermittently).
  with ckpt.finish_on_error():
    if ckpt.latest_step() is not None:
      state, start = ckpt.restore(abstract, data_iter=data)
      pending, resumed_from = None, start  # the iterator now sits where the checkpoint left it
      if is_main:
        print(f"[{task.name}] resumed from {ckpt.step_dir(start)} (step {start})", flush=True)
    else:
      state = create_state(task.init_params, tx, t.seed, first, mesh, load=task.load_pretrained)

  steps = {}  # phase -> compiled step (each traced once)

  def step_fn(phase: int):
    if phase not in steps:
      steps[phase] = make_train_step(
          task.loss_fn, tx, mesh, shardings, schedule=schedule,
          grad_accum_steps=t.grad_accum_steps, loss_denominators=task.loss_denominators,
          frozen=task.frozen, nan_policy=t.nan_policy,
          deterministic_reduce=t.get("deterministic_reduce", False))
    return steps[phase]

  eval_cache, eval_step = [], []

  def evaluate(state) -> dict:
    out = {}
    if task.eval_batches is not None and task.eval_metrics_fn is not None:
      if not eval_step:
        eval_step.append(make_eval_step(task.eval_metrics_fn, mesh, shardings.params))
        eval_cache.extend(task.eval_batches())
      totals = {}
      rows = max((next(iter(b.values())).shape[0] for b in eval_cache), default=0)
      for b in eval_cache:
        m = jax.device_get(eval_step[0](state.params, shd.shard_batch(_pad_rows(b, rows), mesh)))
        for k, v in m.items():
          totals[k] = totals.get(k, 0.0) + float(v)
      out.update({"eval_" + k: v for k, v in combine_host(totals).items()})
    if task.eval_fn is not None:
      out.update({"eval_" + k: float(v) for k, v in task.eval_fn(state.params).items()})
    return out

  def save_then_evaluate(step, state, force=False) -> dict:
    """The step's checkpoint starts before its evaluation, so an evaluation that fails cannot
    cost the step. A best-metric policy ranks checkpoints by this step's evaluation, so there
    the evaluation has to come first."""
    if ckpt.best_metric:
      ev = evaluate(state)
      ckpt.save(step, state, data, metrics=ev, force=force)
      return ev
    ckpt.save(step, state, data, force=force)
    return evaluate(state)

  # 4. the loop
  writer = mlib.MetricsWriter(workdir, start)
  peak = mlib.peak_flops_per_device(getattr(t, "peak_tflops", 0.0))
  bar = _progress(t.num_steps, start, progress and is_main)
  step, last_log, stopped, last_train, last_eval, last_eval_step = start, None, "", {}, {}, None
  finite_flags = []
  window_start, window_steps, window_rows, window_tokens = None, 0, 0, 0
  flops = None
  with PreemptionGuard() as guard, ckpt.finish_on_error():
    while step < t.num_steps:
      if data.ensure_phase(step) and is_main:
        print(f"[{task.name}] phase 2 from step {step}", flush=True)
      if pending is not None:
        batch, pending = pending, None
      else:
        try:
          batch = next(data)
        except StopIteration:
          if is_main:
            print(f"[{task.name}] training data exhausted at step {step}", flush=True)
          break
      gbatch = shd.shard_batch(batch, mesh)
      fn = step_fn(data.phase)
      state, m = fn(state, gbatch)
      step += 1
      finite_flags.append(m["finite"])
      shape = next(iter(gbatch.values())).shape  # [B, S] of the global batch
      if window_start is None:  # the first step compiles: time from its end
        jax.block_until_ready(m)
        window_start = time.time()
      else:
        window_steps += 1
        window_rows += shape[0]
        window_tokens += shape[0] * (shape[1] if len(shape) > 1 else 1)
      if task.flops_per_step is not None:
        flops = task.flops_per_step({k: v.shape for k, v in gbatch.items()})

      record = {}
      if step % t.log_every == 0 or step == t.num_steps:
        m = jax.device_get(m)
        flags = [bool(f) for f in jax.device_get(finite_flags)]
        if t.nan_policy == "stop" and not all(flags):
          raise FloatingPointError(
              f"non-finite loss or gradient at step {step - len(flags) + 1 + flags.index(False)}"
              f"; stopped at step {step}, the latest checkpoint has finite weights; lower "
              f"optim.learning_rate, check the data, or set train.nan_policy=skip")
        skipped = [step - len(flags) + 1 + i for i, f in enumerate(flags) if not f]
        if skipped and is_main:            # nan_policy=skip: say so, the weights were kept
          (bar.write if bar is not None else print)(
              f"[{task.name}] skipped {len(skipped)} update(s) with a non-finite loss or "
              f"gradient (steps {', '.join(map(str, skipped[:5]))}"
              f"{', ...' if len(skipped) > 5 else ''}); the weights before them were kept")
        finite_flags.clear()
        record = combine_host({k: v for k, v in m.items() if k != "finite"})
        now = time.time()
        dt = now - window_start
        if window_steps and dt > 0:
          record["seq_per_s"] = window_rows / dt
          record["tokens_per_s"] = window_tokens / dt
          record["mfu"] = (flops * window_steps / dt / (peak * num_devices)
                           if flops and peak else None)
        window_start, window_steps, window_rows, window_tokens = now, 0, 0, 0
        last_train = dict(record)
        if bar is not None:
          bar.set_postfix(loss=f"{record['loss']:.3f}",
                          seq_s=f"{record.get('seq_per_s', 0):.1f}", refresh=False)
        elif progress and is_main:
          print(f"[{task.name}] step {step}/{t.num_steps} loss {record['loss']:.4f} "
                f"{record.get('seq_per_s', 0):.1f} seq/s", flush=True)
      if t.eval_every and (step % t.eval_every == 0 or step == t.num_steps):
        last_eval, last_eval_step = save_then_evaluate(step, state), step
        record.update(last_eval)
        window_start = time.time()  # evaluation time is not training throughput
      else:
        ckpt.save(step, state, data)
      if record:
        writer.write(step, record)
      if bar is not None:
        bar.update(1)
      if guard.should_stop(step):
        stopped = guard.signal_name or "signal"
        break

  # 5. final save, evaluation, curves
  if bar is not None:
    bar.close()
  if stopped and is_main:
    print(f"[{task.name}] {stopped}: stopping at step {step}; saving a checkpoint", flush=True)
  with ckpt.finish_on_error():
    if not stopped and last_eval_step is None and (task.eval_fn or task.eval_batches):
      last_eval = save_then_evaluate(step, state, force=True)  # eval_every = 0, or resumed a
      if step > start and last_eval:                           # finished run: evaluate once
        writer.write(step, last_eval)
    else:
      ckpt.save(step, state, data, metrics=last_eval if last_eval_step == step else None,
                force=True)
    ckpt.wait()
  ckpt.close()
  writer.close()
  curves = None
  if is_main and mlib.read_metrics(workdir):
    curves = os.path.abspath(mlib.plot(workdir))
  summary = {
      "task": task.name, "steps": step, "num_steps": t.num_steps, "resumed_from": resumed_from,
      "stopped": stopped, "devices": num_devices, "processes": jax.process_count(),
      "train": last_train, "eval": last_eval,
      "checkpoint": ckpt.step_dir(step), "workdir": os.path.abspath(workdir),
      "metrics": os.path.join(os.path.abspath(workdir), mlib.METRICS_FILE), "curves": curves,
      "compiles": {phase: s.traces for phase, s in steps.items()},
      "wall_s": time.time() - t0, "state": state,
  }
  return summary
