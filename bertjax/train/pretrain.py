"""Pretraining as a TrainTask: BertForPreTraining on the prepared corpus, MLM + NSP
(data.objective=nsp, BERT 2018) or MLM only on packed rows (data.objective=mlm: no NSP head).

`run_pretraining(cfg, workdir)` is what `bertjax pretrain` does: check paths, prepare the corpus
once (WORKDIR/prepared unless data.prepared_dir), build the task, run the one trainer
(bertjax.train.loop), export a fine-tuning bundle to WORKDIR/export, print the summary.

For benchmarks and AOT compiles without data: `pretrain_task(cfg, synthetic=True)` feeds
random batches of the configured shapes, and `batch_spec(cfg, phase)` gives the global shapes.

model.vocab_size comes from the tokenizer: the base default (30522) is replaced by the
tokenizer's size; an explicit larger value is kept (padded vocabulary, e.g. a multiple of 128
for faster matmuls); a smaller one is an error.

Budgets (train.budget_tokens / budget_minutes) set train.num_steps before anything is built;
the resolved value goes to WORKDIR/budget.json and a resumed run reads it back, so its
learning-rate and masking-rate schedules continue where they were (see `resolve_budget`).

Over 400 lines: what `bertjax pretrain` adds to the one trainer, in run order: the task (data,
loss, evaluation), the budget (resolved before anything compiles) and the summary; the trainer's
own pieces live in setup.py and loop.py, held-out scoring of a finished run in score.py.
"""
from __future__ import annotations

import copy
import glob
import os
import shutil
import time
from typing import Optional

import json

import jax
import jax.numpy as jnp
import numpy as np

from bertjax.config import phase2_start, two_phase as _two_phase
from bertjax.data.masking import derived_max_predictions
from bertjax.errors import UserError
from bertjax.losses import (pretraining_denominators, pretraining_sums, weighted_accuracy,
                            weighted_cross_entropy)
from bertjax.model import BertForPreTraining
from bertjax.train import metrics as mlib
from bertjax.train.task import TrainTask
from bertjax.weights.warm_start import warm_start

DEFAULT_VOCAB = 30522
FIELDS = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
          "masked_lm_weights", "next_sentence_labels")


def phase_shapes(cfg, phase: int) -> tuple[int, int, int]:
  """(global batch B, sequence S, predictions P) of phase 0 or 1. P = 0 in the config: derived
  from the highest masking rate the phase uses (train schedule ends or evaluation)."""
  d, t = cfg.data, cfg.train
  if phase == 0:
    b, s, p = t.global_batch_size, d.max_seq_length, d.max_predictions_per_seq
  else:
    b, s, p = (t.phase2_global_batch_size or t.global_batch_size, t.phase2_max_seq_length,
               t.phase2_max_predictions_per_seq)
  if p == 0:
    p = derived_max_predictions(max(d.masked_lm_prob, d.masked_lm_prob_end,
                                    d.eval_masked_lm_prob), s)
  return b, s, p


def uses_nsp(cfg) -> bool:
  return cfg.data.objective == "nsp"


def two_phase(cfg) -> bool:
  return _two_phase(cfg.train)


def final_phase(cfg) -> int:
  """The phase whose shapes the run ends with: held-out rows are scored at them (a run that
  starts on short rows is judged at the length it is trained for)."""
  return 1 if two_phase(cfg) else 0


def as_one_phase(cfg, phase: int):
  """A copy of cfg training one phase with the shapes of `phase` (budget probes, scoring)."""
  c = copy.deepcopy(cfg)
  b, s, p = phase_shapes(cfg, phase)
  with c.unlocked():
    c.train.global_batch_size, c.data.max_seq_length, c.data.max_predictions_per_seq = b, s, p
    c.train.phase2_start, c.train.phase2_fraction = 0, 0.0
  return c


def batch_spec(cfg, phase: int = 0, batch: Optional[int] = None) -> dict:
  """ShapeDtypeStructs of a (global, unless `batch`) pretraining batch."""
  b, s, p = phase_shapes(cfg, phase)
  b = batch or b
  i32, f32 = jnp.int32, jnp.float32
  spec = {"input_ids": jax.ShapeDtypeStruct((b, s), i32),
          "input_mask": jax.ShapeDtypeStruct((b, s), i32),
          "segment_ids": jax.ShapeDtypeStruct((b, s), i32),
          "masked_lm_positions": jax.ShapeDtypeStruct((b, p), i32),
          "masked_lm_ids": jax.ShapeDtypeStruct((b, p), i32),
          "masked_lm_weights": jax.ShapeDtypeStruct((b, p), f32)}
  if uses_nsp(cfg):
    spec["next_sentence_labels"] = jax.ShapeDtypeStruct((b,), i32)
  else:
    spec["position_ids"] = jax.ShapeDtypeStruct((b, s), i32)
  return spec


class SyntheticIterator:
  """Random pretraining batches, a pure function of (seed, batch index): same global batch for
  any process count, each process yielding its own rows. get_state/set_state like grain's."""

  global_position = True  # batches_read counts global batches (bertjax.checkpoint)

  def __init__(self, cfg, phase: int = 0, seed: int = 0, process_index: int = 0,
               process_count: int = 1):
    self.b, self.s, self.p = phase_shapes(cfg, phase)
    self.vocab = cfg.model.vocab_size
    self.nsp = uses_nsp(cfg)
    self.seed, self.pi, self.pc, self.n = seed, process_index, process_count, 0

  def __iter__(self):
    return self

  def __next__(self) -> dict:
    rng = np.random.default_rng([self.seed, self.n])
    self.n += 1
    b, s, p = self.b, self.s, self.p
    lengths = rng.integers(s // 2, s + 1, size=b)                               # [B]
    pos = np.arange(s)
    mask = (pos[None, :] < lengths[:, None]).astype(np.int32)                   # [B, S]
    ids = rng.integers(5, self.vocab, size=(b, s)).astype(np.int32) * mask      # [B, S]
    seg = ((pos[None, :] >= (lengths // 2)[:, None]) & (mask > 0)).astype(np.int32)
    n_pred = np.minimum(rng.integers(1, p + 1, size=b), lengths - 1)            # [B]
    positions = np.zeros((b, p), np.int32)
    weights = np.zeros((b, p), np.float32)
    for r in range(b):
      chosen = np.sort(rng.choice(np.arange(1, lengths[r]), size=n_pred[r], replace=False))
      positions[r, :n_pred[r]] = chosen
      weights[r, :n_pred[r]] = 1.0
    labels = np.where(weights > 0, rng.integers(5, self.vocab, size=(b, p)), 0).astype(np.int32)
    batch = {"input_ids": ids, "input_mask": mask, "segment_ids": seg,
             "masked_lm_positions": positions, "masked_lm_ids": labels,
             "masked_lm_weights": weights}
    if self.nsp:
      batch["next_sentence_labels"] = rng.integers(0, 2, size=b).astype(np.int32)
    else:  # packed-row layout: one document per row, positions 0..S-1
      batch["segment_ids"] = np.zeros_like(seg)
      batch["position_ids"] = np.broadcast_to(pos, (b, s)).astype(np.int32)
    rows = slice(self.pi * b // self.pc, (self.pi + 1) * b // self.pc)
    return {k: v[rows] for k, v in batch.items()}

  def get_state(self) -> dict:
    return {"batches_read": self.n}

  def set_state(self, state: dict) -> None:
    self.n = int(state["batches_read"])


def mlm_sums(mlm_logits, batch) -> dict:
  """MLM-only metrics (x, x_weight) over the masked positions; mlm_logits [B, P, V]."""
  w = batch["masked_lm_weights"]                                          # [B, P]
  loss, n = weighted_cross_entropy(mlm_logits, batch["masked_lm_ids"], w)
  acc, _ = weighted_accuracy(mlm_logits, batch["masked_lm_ids"], w)
  return {"mlm_loss": loss, "mlm_loss_weight": n, "mlm_acc": acc, "mlm_acc_weight": n}


def mlm_denominators(batch) -> dict:
  return {"mlm": jnp.sum(batch["masked_lm_weights"].astype(jnp.float32))}


def make_loss_fn(model):
  """(params, batch, dropout_rng | None, denominators=None) -> (loss, metric sums).
  The NSP term exists when the model has its NSP head (model.nsp)."""

  def loss_fn(params, batch, rng, denominators=None):
    mlm_logits, nsp_logits = model.apply(
        {"params": params}, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
        batch["masked_lm_positions"], deterministic=rng is None,
        rngs={"dropout": rng} if rng is not None else {},
        position_ids=batch.get("position_ids"))                  # [B, P, V], [B, 2] | None
    if not model.nsp:
      sums = mlm_sums(mlm_logits, batch)
      den = denominators if denominators is not None else mlm_denominators(batch)
      return sums["mlm_loss"] / jnp.maximum(den["mlm"], 1e-9), sums
    sums = pretraining_sums(mlm_logits, nsp_logits, batch)
    den = denominators if denominators is not None else pretraining_denominators(batch)
    loss = (sums["mlm_loss"] / jnp.maximum(den["mlm"], 1e-9)
            + sums["nsp_loss"] / jnp.maximum(den["nsp"], 1e-9))
    return loss, sums

  return loss_fn


def mlm_baseline(batches) -> float:
  """Accuracy of always predicting the most frequent masked token of these batches: the best
  constant guess on that very text (what a model that learned only token frequencies gets)."""
  labels = np.concatenate([b["masked_lm_ids"][b["masked_lm_weights"] > 0] for b in batches]
                          + [np.zeros(0, np.int32)])
  if labels.size == 0:
    return float("nan")
  return float(np.bincount(labels).max() / labels.size)


def _check_paths(cfg) -> None:
  d = cfg.data
  if not os.path.isfile(d.tokenizer):
    raise UserError(f"data.tokenizer={d.tokenizer}: file not found; point it at a SentencePiece "
                    f".model or WordPiece vocab.txt (bertjax tokenizer trains one)")
  if not d.corpus.startswith("tfds:"):
    from bertjax.data.corpus import split_format  # noqa: PLC0415
    globs = [split_format(g.strip())[0] for g in d.corpus.split(",") if g.strip()]
    missing = [g for g in globs if not glob.glob(g)]
    if missing:
      raise UserError(f"data.corpus={d.corpus}: no file matches {missing[0]!r}; set "
                      f"--config.data.corpus to a glob of text files (run from the repository "
                      f"root for the bundled data/corpus)")


def set_vocab_from_tokenizer(cfg, vocab_size: int) -> None:
  m = cfg.model
  if m.vocab_size == DEFAULT_VOCAB and vocab_size != DEFAULT_VOCAB:
    m.vocab_size = vocab_size
  elif m.vocab_size < vocab_size:
    raise UserError(f"model.vocab_size={m.vocab_size} is smaller than the tokenizer's "
                    f"{vocab_size} tokens ({cfg.data.tokenizer}); remove the override (pretraining "
                    f"takes it from the tokenizer) or set it >= {vocab_size}")


def pretrain_task(cfg, workdir: str = "", *, synthetic: bool = False,
                  init_from: str = "") -> TrainTask:
  """The pretraining TrainTask. Real data: checks paths, sets model.vocab_size from the
  tokenizer and prepares the corpus (idempotent) before anything compiles."""
  d, t = cfg.data, cfg.train
  pi, pc = jax.process_index(), jax.process_count()
  tok_identity = None
  if synthetic:
    train_iter = SyntheticIterator(cfg, 0, t.seed, pi, pc)
    phase2 = lambda: SyntheticIterator(cfg, 1, t.seed + 1, pi, pc)
    eval_batches = lambda: [next(SyntheticIterator(cfg, final_phase(cfg), t.seed + 2, pi, pc))
                            for _ in range(t.eval_batches)]
  else:
    from bertjax.data.pipeline import make_pretrain_iterator
    from bertjax.data.prepare_hosts import prepare_once
    from bertjax.data.tokenizer import load_tokenizer
    _check_paths(cfg)
    tok = load_tokenizer(d.tokenizer, d.do_lower_case)
    set_vocab_from_tokenizer(cfg, tok.vocab_size)
    tok_identity = tok.identity()
    prepared = d.prepared_dir or os.path.join(workdir, "prepared")
    if pi == 0:
      print(f"[pretrain] preparing {d.corpus} -> {prepared} (once; reused on later runs)",
            flush=True)
    t0 = time.time()
    manifest = prepare_once(d, prepared, num_workers=d.num_workers)  # process 0; others wait
    if pi == 0:
      from bertjax.data.prepare import format_summary
      print("\n".join(f"[pretrain] {line}" for line in format_summary(manifest).splitlines()[:2])
            + f"\n[pretrain] corpus ready in {time.time() - t0:.0f}s; compiling the train step "
            f"(first step)...", flush=True)

    def iterator(split, phase, seed, num_epochs=None, evaluation=False):
      b, s, p = phase_shapes(cfg, phase)
      rates = (dict(masked_lm_prob=d.eval_masked_lm_prob) if evaluation else
               dict(masked_lm_prob=d.masked_lm_prob, masked_lm_prob_end=d.masked_lm_prob_end,
                    schedule_steps=t.num_steps, step_offset=phase2_start(t) if phase else 0))
      return make_pretrain_iterator(
          prepared, split, global_batch_size=b, max_seq_length=s, max_predictions_per_seq=p,
          short_seq_prob=d.short_seq_prob, whole_word_masking=d.whole_word_masking, seed=seed,
          process_index=pi, process_count=pc, num_workers=d.num_workers, num_epochs=num_epochs,
          objective=d.objective, cross_document_attention=d.cross_document_attention,
          mask_token_prob=d.mask_token_prob, random_token_prob=d.random_token_prob, **rates)

    train_iter = iterator("train", 0, d.seed)
    phase2 = lambda: iterator("train", 1, d.seed + 1)

    def eval_batches():
      if manifest["splits"]["heldout"]["pieces"] == 0:  # heldout_fraction=0, or a tiny corpus
        if pi == 0:
          print(f"[pretrain] {prepared} has no held-out documents (data.heldout_fraction="
                f"{d.heldout_fraction}): evaluation skipped", flush=True)
        return []
      it = iterator("heldout", final_phase(cfg), d.seed + 2, evaluation=True)
      out = []
      for _ in range(t.eval_batches):
        try:
          out.append(next(it))
        except StopIteration:
          break
      return out

  model = BertForPreTraining(cfg.model, nsp=uses_nsp(cfg))
  loss_fn = make_loss_fn(model)

  def init_params(rng, batch):
    return model.init(rng, batch["input_ids"], batch["segment_ids"], batch["input_mask"],
                      batch["masked_lm_positions"], deterministic=True,
                      position_ids=batch.get("position_ids"))["params"]

  def eval_metrics_fn(params, batch):
    return loss_fn(params, batch, None)[1]

  def flops(shapes):
    b, s = shapes["input_ids"]
    return mlib.bert_pretraining_flops(cfg.model, b, s, shapes["masked_lm_positions"][1])

  return TrainTask(
      name="pretrain", model=model, init_params=init_params, loss_fn=loss_fn,
      train_iter=train_iter,
      loss_denominators=pretraining_denominators if uses_nsp(cfg) else mlm_denominators,
      eval_batches=eval_batches, eval_metrics_fn=eval_metrics_fn,
      make_phase2_iter=phase2 if two_phase(cfg) else None, flops_per_step=flops,
      load_pretrained=warm_start(init_from) if init_from else None,
      tokenizer_identity=tok_identity)


def _fmt_time(s: float) -> str:
  return f"{int(s // 60)}m{int(s % 60):02d}s"


def format_summary(summary: dict, export_dir: Optional[str]) -> str:
  tr, ev = summary["train"], summary["eval"]
  lines = [f"Pretraining {'stopped' if summary['stopped'] else 'finished'}: "
           f"{summary['steps']}/{summary['num_steps']} steps in {_fmt_time(summary['wall_s'])} "
           f"({summary['devices']} devices, {summary['processes']} process"
           f"{'es' if summary['processes'] > 1 else ''})"]
  if summary["stopped"]:
    lines.append(f"  stopped by {summary['stopped']}; run the same command again to resume")
  if tr:
    nsp = f"NSP acc {tr['nsp_acc']:.3f}  " if "nsp_acc" in tr else ""
    lines.append(f"  train     loss {tr['loss']:.3f}  MLM acc {tr.get('mlm_acc', 0):.3f}  "
                 f"{nsp}({tr.get('seq_per_s', 0):.1f} seq/s)")
  if ev:
    line = (f"  held-out  MLM loss {ev.get('eval_mlm_loss', float('nan')):.3f}  "
            f"MLM acc {ev.get('eval_mlm_acc', float('nan')):.3f}")
    if "mlm_baseline" in summary:
      line += f" (most-frequent-token baseline {summary['mlm_baseline']:.3f})"
    at_mask = summary.get("heldout_at_mask")
    if "eval_nsp_acc" in ev:
      line += (f"  NSP loss {ev['eval_nsp_loss']:.3f}  NSP acc {ev['eval_nsp_acc']:.3f} "
               f"(chance 0.500)")
    lines.append(line)
    if at_mask:
      lines.append(f"  held-out, every scored token [MASK]ed: MLM acc {at_mask['mlm_acc']:.3f} "
                   f"(baseline {at_mask['baseline']:.3f}): what it predicts from context alone")
  lines.append(f"  checkpoint  {summary['checkpoint']}")
  if export_dir:
    lines.append(f"  exported    {export_dir}  (fine-tune: bertjax finetune --init {export_dir})")
  lines.append(f"  metrics     {summary['metrics']}")
  if summary["curves"]:
    lines.append(f"  curves      {summary['curves']}")
  lines.append(f"  tensorboard --logdir {os.path.join(summary['workdir'], 'tb')}")
  return "\n".join(lines)


BUDGET_FILE = "budget.json"


def measure_step_seconds(cfg, steps: int = 12, warmup: int = 4) -> float:
  """Seconds per train step of this config on these devices (synthetic batches, after the
  compile and a few warm-up steps): what budget_minutes divides by."""
  step, state, next_batch = _synthetic_setup(cfg)
  batches = [next_batch() for _ in range(2)]
  # The compile is not a train step, nor are the first steps after it: on the demo config, 6
  # steps timed straight after the compile gave 0.219 s per step where the run then logged
  # 0.18 s (176 seq/s), which cost the 4.5-minute budget a sixth of its steps.
  for i in range(warmup):
    state, m = step(state, batches[i % 2])
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for i in range(steps):
    state, m = step(state, batches[i % 2])
  jax.block_until_ready(m)
  return (time.perf_counter() - t0) / steps


def _phased_steps(budget: float, cost: tuple, start: int, fraction: float, ceil: bool) -> int:
  """Steps whose summed cost (seconds or tokens; cost = per step of phase 1, phase 2) fits
  `budget`: the second phase from step `start`, or from round(fraction x steps)."""
  c1, c2 = cost
  if fraction > 0:
    n = budget / (fraction * c1 + (1.0 - fraction) * c2)
  elif budget <= start * c1:            # the budget ends inside phase 1
    n = budget / c1
  else:
    n = start + (budget - start * c1) / c2
  return max(1, -int(-n // 1) if ceil else int(n))


def resolve_budget(cfg, workdir: str, measure=measure_step_seconds) -> Optional[dict]:
  """Set train.num_steps from train.budget_tokens / budget_minutes (no budget: nothing).

  The first run resolves it (minutes: from measured step times, on process 0) and writes
  WORKDIR/budget.json; a later run of the workdir with the same budget reads num_steps back,
  so a resume keeps its schedules even on a faster or slower machine. Tokens count the token
  slots of each step (global batch x S). A two-phase run measures both phases' steps and
  spends the budget over both (with train.phase2_fraction, phase 2 starts at that share of
  the resolved steps). Returns the budget record."""
  from bertjax.optim import budget_steps
  t = cfg.train
  if not (t.budget_tokens > 0 or t.budget_minutes > 0):
    return None
  b, s, _ = phase_shapes(cfg, 0)
  key = {"budget_tokens": int(t.budget_tokens), "budget_minutes": float(t.budget_minutes),
         "global_batch_size": b, "max_seq_length": s}
  phases = [0, 1] if two_phase(cfg) else [0]
  if len(phases) == 2:
    b2, s2, _ = phase_shapes(cfg, 1)
    key.update(phase2_start=int(t.phase2_start), phase2_fraction=float(t.phase2_fraction),
               phase2_global_batch_size=b2, phase2_max_seq_length=s2)
  path = os.path.join(workdir, BUDGET_FILE)
  is_main = jax.process_index() == 0
  if os.path.isfile(path):
    try:
      with open(path) as f:
        saved = json.load(f)
      same, steps = saved["budget"] == key, int(saved["num_steps"])
    except (ValueError, KeyError, TypeError):
      raise UserError(f"{path}: not a budget record written by bertjax (delete it to resolve "
                      "the budget again)") from None
    if same:
      t.num_steps = steps
      return saved
    if is_main:
      print(f"[pretrain] the budget changed since {path} ({saved['budget']} -> {key}); "
            "resolving it again: the schedules change length", flush=True)
  seconds = None
  if t.budget_minutes > 0:
    seconds = [measure(as_one_phase(cfg, ph) if len(phases) == 2 else cfg) if is_main else 0.0
               for ph in phases]
    if jax.process_count() > 1:  # every host must run the same number of steps
      from jax.experimental import multihost_utils
      seconds = [float(v) for v in
                 multihost_utils.broadcast_one_to_all(np.asarray(seconds, np.float64))]
  if len(phases) == 1:
    steps = budget_steps(t, b * s, seconds[0] if seconds else None)
  elif t.budget_tokens > 0:
    steps = _phased_steps(t.budget_tokens, (b * s, b2 * s2), t.phase2_start,
                          t.phase2_fraction, ceil=True)
  else:
    steps = _phased_steps(t.budget_minutes * 60.0, tuple(seconds), t.phase2_start,
                          t.phase2_fraction, ceil=False)
  record = {"budget": key, "num_steps": steps,
            "step_seconds": seconds[0] if seconds and len(seconds) == 1 else seconds}
  t.num_steps = steps
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)
    per = " + ".join(f"{v:.3f}" for v in seconds) if seconds else ""
    how = (f"{t.budget_tokens} tokens / {b * s} per step" if t.budget_tokens > 0 else
           f"{t.budget_minutes} min / {per} s per step")
    if len(phases) == 2:
      how += " (phases 1 + 2)"
    print(f"[pretrain] budget: {how} -> train.num_steps={t.num_steps} (kept in {path})",
          flush=True)
  return record


def run_pretraining(cfg, workdir: str, *, init_from: str = "", synthetic: bool = False,
                    export: bool = True, progress: bool = True) -> dict:
  """`bertjax pretrain`: prepare, train (resuming), export, summarise. Returns the summary."""
  from bertjax.train.loop import train
  from bertjax.weights import export as export_lib
  if not synthetic:  # paths checked and vocab_size known before a budget compiles a step
    from bertjax.data.tokenizer import load_tokenizer
    _check_paths(cfg)
    set_vocab_from_tokenizer(cfg, load_tokenizer(cfg.data.tokenizer,
                                                 cfg.data.do_lower_case).vocab_size)
  budget = resolve_budget(cfg, workdir)
  task = pretrain_task(cfg, workdir, synthetic=synthetic, init_from=init_from)
  summary = train(task, cfg, workdir, progress=progress)
  summary["budget"] = budget
  if task.eval_batches is not None and summary["eval"]:
    summary["mlm_baseline"] = mlm_baseline(list(task.eval_batches()))
    if not synthetic and not summary["stopped"] and jax.process_count() == 1:
      # The held-out accuracy counts the 10% of scored tokens left visible, which a model
      # copies long before it uses context: score the same positions all [MASK]ed as well.
      from bertjax.train.score import score_heldout
      summary["heldout_at_mask"] = score_heldout(
          workdir, cfg.data.prepared_dir or os.path.join(workdir, "prepared"),
          masked_lm_prob=cfg.data.eval_masked_lm_prob, mask_only=True)
  export_dir = None
  if export and not summary["stopped"] and not synthetic:
    if jax.process_count() == 1:
      export_dir = os.path.join(os.path.abspath(workdir), "export")
      if os.path.isdir(export_dir):  # ours, from an earlier run of this workdir: refresh it
        shutil.rmtree(export_dir)
      export_lib.export(workdir, export_dir, step=summary["steps"])
    elif jax.process_index() == 0:  # Orbax's reads synchronise hosts: export from one process
      print(f"[pretrain] export with: bertjax export {workdir} OUT_DIR", flush=True)
  summary["export"] = export_dir
  if jax.process_index() == 0:
    print(format_summary(summary, export_dir), flush=True)
  return summary


def _synthetic_setup(cfg):
  """The trainer's step and a fresh state of `cfg` on synthetic phase-1 batches, without data
  or a workdir: (step, state, next_batch: () -> global batch)."""
  from bertjax import sharding as shd
  from bertjax.train import setup
  mesh = shd.make_mesh(cfg.mesh)
  task = pretrain_task(cfg, synthetic=True)
  it = SyntheticIterator(cfg, 0, cfg.train.seed, jax.process_index(), jax.process_count())
  pieces = setup.build(task, cfg, mesh, next(it))
  return pieces.make_step(), pieces.init_state(), lambda: shd.shard_batch(next(it), mesh)
