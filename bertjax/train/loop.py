"""The one trainer: `train(task, cfg, workdir) -> summary`, for pretraining and fine-tuning.

Top to bottom:
  1. mesh over every device of every process; config checks before anything compiles;
  2. optimizer (config.optim) and the state's shapes/shardings from one example batch
     (bertjax.train.setup.build: the same pieces the benchmarks and `bertjax compile` use);
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

import jax

from bertjax import sharding as shd
from bertjax.checkpoint import Checkpointer
from bertjax.config import phase2_start, resume_values, validate
from bertjax.data.tokenizer import checkpoint_tokenizer
from bertjax.errors import UserError
from bertjax.train import metrics as mlib
from bertjax.train import setup
from bertjax.train.step import combine_host, make_eval_step
from bertjax.train.preemption import PreemptionGuard
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




def _progress(total: int, initial: int, enabled: bool):
  """A tqdm bar on a terminal; elsewhere (logs, CI) plain lines are printed at log steps."""
  import sys
  if not enabled or not sys.stderr.isatty():
    return None
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, desc="train")


class Evaluator:
  """The task's evaluations: trainer-run (`eval_batches` + `eval_metrics_fn`, jitted once, the
  batches read once and padded to one row count) and host-side (`eval_fn`)."""

  def __init__(self, task: TrainTask, mesh, param_shardings):
    self.task, self.mesh, self.param_shardings = task, mesh, param_shardings
    self.step, self.batches = None, []
    self.enabled = bool(task.eval_fn or task.eval_batches)

  def __call__(self, state) -> dict:
    task, out = self.task, {}
    if task.eval_batches is not None and task.eval_metrics_fn is not None:
      if self.step is None:
        self.step = make_eval_step(task.eval_metrics_fn, self.mesh, self.param_shardings)
        self.batches.extend(task.eval_batches())
      totals = {}
      rows = max((next(iter(b.values())).shape[0] for b in self.batches), default=0)
      for b in self.batches:
        m = jax.device_get(self.step(state.params, shd.shard_batch(shd.pad_rows(b, rows),
                                                                    self.mesh)))
        for k, v in m.items():
          totals[k] = totals.get(k, 0.0) + float(v)
      out.update({"eval_" + k: v for k, v in combine_host(totals).items()})
    if task.eval_fn is not None:
      out.update({"eval_" + k: float(v) for k, v in task.eval_fn(state.params).items()})
    return out


class Throughput:
  """Rows and tokens per second between log steps, from the end of the first (compiling) step;
  evaluation time is not counted (`restart`)."""

  def __init__(self):
    self.start, self.steps, self.rows, self.tokens = None, 0, 0, 0

  def add(self, metrics, shape) -> None:
    if self.start is None:  # the first step compiles: time from its end
      jax.block_until_ready(metrics)
      self.start = time.time()
    else:
      self.steps += 1
      self.rows += shape[0]
      self.tokens += shape[0] * (shape[1] if len(shape) > 1 else 1)

  def take(self, flops, peak, num_devices) -> dict:
    """This window's rates (empty before the second step); starts the next window."""
    now = time.time()
    dt, out = now - self.start, {}
    if self.steps and dt > 0:
      out["seq_per_s"] = self.rows / dt
      out["tokens_per_s"] = self.tokens / dt
      out["mfu"] = flops * self.steps / dt / (peak * num_devices) if flops and peak else None
    self.start, self.steps, self.rows, self.tokens = now, 0, 0, 0
    return out

  def restart(self) -> None:
    self.start = time.time()


class TrainLog:
  """What the loop reports, on process 0: metrics.jsonl and TensorBoard at log and evaluation
  steps, the progress bar (or plain lines off a terminal), throughput and MFU, and the updates
  skipped as non-finite. `after_step` also applies train.nan_policy=stop."""

  def __init__(self, task: TrainTask, t, workdir: str, start: int, num_devices: int,
               progress: bool, is_main: bool):
    self.task, self.t, self.num_devices = task, t, num_devices
    self.progress, self.is_main = progress, is_main
    self.writer = mlib.MetricsWriter(workdir, start)
    self.peak = mlib.peak_flops_per_device(getattr(t, "peak_tflops", 0.0))
    self.bar = _progress(t.num_steps, start, progress and is_main)
    self.window, self.finite, self.flops, self.last_train = Throughput(), [], None, {}

  def after_step(self, step: int, m: dict, gbatch: dict) -> dict:
    """After each step: the step's record of train metrics (empty except at log steps)."""
    t, name = self.t, self.task.name
    self.finite.append(m["finite"])
    self.window.add(m, next(iter(gbatch.values())).shape)  # [B, S] of the global batch
    if self.task.flops_per_step is not None:
      self.flops = self.task.flops_per_step({k: v.shape for k, v in gbatch.items()})
    if not (step % t.log_every == 0 or step == t.num_steps):
      return {}
    m = jax.device_get(m)
    skipped = _check_finite(self.finite, step, t.nan_policy)
    if skipped and self.is_main:            # nan_policy=skip: say so, the weights were kept
      (self.bar.write if self.bar is not None else print)(
          f"[{name}] skipped {len(skipped)} update(s) with a non-finite loss or "
          f"gradient (steps {', '.join(map(str, skipped[:5]))}"
          f"{', ...' if len(skipped) > 5 else ''}); the weights before them were kept")
    self.finite.clear()
    record = combine_host({k: v for k, v in m.items() if k != "finite"})
    record.update(self.window.take(self.flops, self.peak, self.num_devices))
    self.last_train = dict(record)
    if self.bar is not None:
      self.bar.set_postfix(loss=f"{record['loss']:.3f}",
                           seq_s=f"{record.get('seq_per_s', 0):.1f}", refresh=False)
    elif self.progress and self.is_main:
      print(f"[{name}] step {step}/{t.num_steps} loss {record['loss']:.4f} "
            f"{record.get('seq_per_s', 0):.1f} seq/s", flush=True)
    return record

  def write(self, step: int, record: dict) -> None:
    if record:
      self.writer.write(step, record)

  def end_step(self, step: int, record: dict) -> None:
    self.write(step, record)
    if self.bar is not None:
      self.bar.update(1)

  def close_bar(self) -> None:
    if self.bar is not None:
      self.bar.close()


def _check_finite(flags: list, step: int, nan_policy: str) -> list[int]:
  """The steps since the last log whose update was skipped as non-finite; nan_policy=stop
  raises at the first one instead."""
  flags = [bool(f) for f in jax.device_get(flags)]
  if nan_policy == "stop" and not all(flags):
    raise FloatingPointError(
        f"non-finite loss or gradient at step {step - len(flags) + 1 + flags.index(False)}"
        f"; stopped at step {step}, the latest checkpoint has finite weights; lower "
        f"optim.learning_rate, check the data, or set train.nan_policy=skip")
  return [step - len(flags) + 1 + i for i, f in enumerate(flags) if not f]


def _restore_or_init(ckpt, pieces, data, first, is_main):
  """Resume order: the workdir's latest checkpoint, else a fresh state, with the task's
  pretrained weights placed into it when it has them. -> (state, start step, batch still to
  train on or None, step resumed from or None)."""
  task = pieces.task
  if ckpt.latest_step() is not None:
    state, start = ckpt.restore(pieces.abstract, data_iter=data)
    if is_main:
      print(f"[{task.name}] resumed from {ckpt.step_dir(start)} (step {start})", flush=True)
    return state, start, None, start  # the iterator now sits where the checkpoint left it
  return pieces.init_state(load=task.load_pretrained), 0, first, None


def train(task: TrainTask, cfg, workdir: str, *, mesh=None, progress: bool = True) -> dict:
  """Train `task` per `cfg` in `workdir` (resuming from its checkpoints); returns a summary."""
  t0 = time.time()
  t = cfg.train
  mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
  num_devices = shd.mesh_size(mesh)
  validate(cfg, num_devices)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  say = lambda msg: print(f"[{task.name}] {msg}", flush=True) if is_main else None

  # 2. optimizer and state layout (shapes come from the first batch; it is trained on, not lost)
  data = PhasedData(task, phase2_start(t))
  try:
    first = next(data)
  except StopIteration:
    raise UserError(f"{task.name}: the training data yielded no batch") from None
  pieces = setup.build(task, cfg, mesh, first)

  # 3. resume order
  tok_identity, tok_files = checkpoint_tokenizer(cfg.data.tokenizer, task.tokenizer_identity)
  ckpt = Checkpointer(workdir, every_steps=cfg.checkpoint.every_steps, keep=cfg.checkpoint.keep,
                      async_save=cfg.checkpoint.async_save,
                      best_metric=cfg.checkpoint.best_metric, config=cfg,
                      resume_values=resume_values(cfg), tokenizer_identity=tok_identity,
                      tokenizer_files=tok_files)
  # A refused resume or --init (UserError) closes Orbax's manager before the error propagates:
  # left open, its background thread could die noisily in interpreter shutdown (a traceback
  # under the one-line error, seen intermittently).
  with ckpt.finish_on_error():
    state, start, pending, resumed_from = _restore_or_init(ckpt, pieces, data, first, is_main)
  steps = {}  # phase -> compiled step (each traced once)
  evaluate = Evaluator(task, mesh, pieces.shardings.params)

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
  log = TrainLog(task, t, workdir, start, num_devices, progress, is_main)
  step, stopped, last_eval, last_eval_step = start, "", {}, None
  with PreemptionGuard() as guard, ckpt.finish_on_error():
    while step < t.num_steps:
      if data.ensure_phase(step):
        say(f"phase 2 from step {step}")
      if pending is not None:
        batch, pending = pending, None
      else:
        try:
          batch = next(data)
        except StopIteration:
          say(f"training data exhausted at step {step}")
          break
      gbatch = shd.shard_batch(batch, mesh)
      if data.phase not in steps:
        steps[data.phase] = pieces.make_step()
      state, m = steps[data.phase](state, gbatch)
      step += 1
      record = log.after_step(step, m, gbatch)
      if t.eval_every and (step % t.eval_every == 0 or step == t.num_steps):
        last_eval, last_eval_step = save_then_evaluate(step, state), step
        record.update(last_eval)
        log.window.restart()  # evaluation time is not training throughput
      else:
        ckpt.save(step, state, data)
      log.end_step(step, record)
      if guard.should_stop(step):
        stopped = guard.signal_name or "signal"
        break

  # 5. final save, evaluation, curves
  log.close_bar()
  if stopped:
    say(f"{stopped}: stopping at step {step}; saving a checkpoint")
  with ckpt.finish_on_error():
    if not stopped and last_eval_step is None and evaluate.enabled:
      last_eval = save_then_evaluate(step, state, force=True)  # eval_every = 0, or resumed a
      if step > start:                                         # finished run: evaluate once
        log.write(step, last_eval)
    else:
      ckpt.save(step, state, data, metrics=last_eval if last_eval_step == step else None,
                force=True)
    ckpt.wait()
  ckpt.close()
  log.writer.close()
  curves = None
  if is_main and mlib.read_metrics(workdir):
    curves = os.path.abspath(mlib.plot(workdir))
  return {
      "task": task.name, "steps": step, "num_steps": t.num_steps, "resumed_from": resumed_from,
      "stopped": stopped, "devices": num_devices, "processes": jax.process_count(),
      "train": log.last_train, "eval": last_eval,
      "checkpoint": ckpt.step_dir(step), "workdir": os.path.abspath(workdir),
      "metrics": os.path.join(os.path.abspath(workdir), mlib.METRICS_FILE), "curves": curves,
      "compiles": {phase: s.traces for phase, s in steps.items()},
      "wall_s": time.time() - t0, "state": state,
  }
