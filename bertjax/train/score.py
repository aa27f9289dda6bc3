"""Score pretraining runs the same way, whatever their recipe: held-out MLM loss / accuracy on
the MLM objective's packed held-out rows at one masking rate, the padding of a recipe's training
batches, and its real (non-pad) tokens per second from metrics.jsonl.

`score_heldout(workdir, prepared_dir)` restores the latest checkpoint's params and config and
evaluates through `pretrain_task`'s own eval_batches / eval_metrics_fn (the trainer's final
evaluation), with the config switched to data.objective=mlm. An NSP-recipe model has the same
encoder and tied MLM head; its NSP head (and pooler) are simply not used. Two runs scored with
the same prepared_dir, rate, seed and batch count see the very same masked held-out rows.
"""
from __future__ import annotations

import copy
import os
from typing import Optional

import jax
import ml_collections
import numpy as np

from bertjax.errors import UserError
from bertjax.train.step import combine_host


def _scoring_config(cfg, prepared_dir: str, masked_lm_prob: float, eval_batches: Optional[int],
                    seed: Optional[int], batch_size: Optional[int], mask_only: bool = False):
  """cfg (a run's) -> the config whose eval batches are the MLM objective's held-out rows."""
  from bertjax.data.masking import derived_max_predictions
  from bertjax.train.pretrain import as_one_phase, final_phase
  # A two-phase run is scored at the shapes it ends with (its held-out evaluation's).
  c = as_one_phase(cfg, final_phase(cfg)) if final_phase(cfg) else copy.deepcopy(cfg)
  with c.unlocked():
    c.data.objective = "mlm"
    c.data.prepared_dir = os.path.abspath(prepared_dir)
    c.data.masked_lm_prob = c.data.eval_masked_lm_prob = float(masked_lm_prob)
    c.data.masked_lm_prob_end = 0.0
    # P from the scoring rate, not the run's: the masked positions are the same for any P that
    # holds them (masking.mask_batch picks the k lowest-scored tokens), so only the padding of
    # the prediction slots would differ.
    c.data.max_predictions_per_seq = derived_max_predictions(masked_lm_prob,
                                                             c.data.max_seq_length)
    if mask_only:  # the same positions and labels (drawn before the 80/10/10 action), all [MASK]
      c.data.mask_token_prob, c.data.random_token_prob = 1.0, 0.0
    if eval_batches is not None:
      c.train.eval_batches = int(eval_batches)
    if seed is not None:
      c.data.seed = int(seed)
    if batch_size is not None:
      c.train.global_batch_size = int(batch_size)
  return c


def score_heldout(workdir: str, prepared_dir: str, *, masked_lm_prob: float = 0.15,
                  eval_batches: Optional[int] = None, seed: Optional[int] = None,
                  batch_size: Optional[int] = None, mask_only: bool = False) -> dict:
  """Held-out MLM metrics of WORKDIR's latest checkpoint on PREPARED_DIR's held-out documents.

  The rows are the MLM objective's packed held-out rows of the run's data.max_seq_length,
  masked at `masked_lm_prob` (80/10/10 and whole-word masking as the run's config says);
  eval_batches / seed / batch_size default to the run's train.eval_batches / data.seed /
  train.global_batch_size (give them to score runs of different configs identically). Paths in
  the run's config (corpus, tokenizer) resolve from the current directory.
  mask_only: every scored position becomes [MASK] (none kept or randomised), so the accuracy is
  what the model predicts from context alone. Under 80/10/10 a tenth of the scored tokens stay
  visible and a model that only copies them and otherwise guesses the commonest token already
  scores ~0.1 + 0.9 x baseline; this number separates the two.
  Returns {mlm_loss, mlm_acc, baseline (most frequent label), masked_tokens, step}."""
  from bertjax import checkpoint
  from bertjax.train.pretrain import mlm_baseline, pretrain_task
  params, meta, step = checkpoint.restore_params(workdir)
  if not (meta.get("config") or {}).get("data"):
    raise UserError(f"{workdir}: checkpoint step {step} has no config in its metadata")
  cfg = _scoring_config(ml_collections.ConfigDict(meta["config"]), prepared_dir,
                        masked_lm_prob, eval_batches, seed, batch_size, mask_only)
  task = pretrain_task(cfg, workdir)
  batches = task.eval_batches()
  if not batches:
    raise UserError(f"{prepared_dir}: no held-out documents to score on (prepare it with "
                    f"data.heldout_fraction > 0)")
  # The MLM-only model's parameters are a subset of the NSP model's: keep those it declares.
  want = jax.eval_shape(task.init_params, jax.random.PRNGKey(0), batches[0])

  def pick(tree, shape):
    if isinstance(shape, dict):
      missing = [k for k in shape if k not in tree]
      if missing:
        raise UserError(f"{workdir}: checkpoint params lack {missing[0]!r}; not a BERT "
                        f"pretraining checkpoint of this model config")
      return {k: pick(tree[k], v) for k, v in shape.items()}
    return tree
  params = pick(params, want)
  metrics_fn = jax.jit(task.eval_metrics_fn)
  totals: dict = {}
  for b in batches:
    for k, v in jax.device_get(metrics_fn(params, b)).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  out = combine_host(totals)
  return {"mlm_loss": out["mlm_loss"], "mlm_acc": out["mlm_acc"],
          "baseline": mlm_baseline(batches), "masked_tokens": int(totals["mlm_loss_weight"]), "step": int(step)}


def train_padding_fraction(cfg, prepared_dir: str, batches: int = 20, phase: int = 0) -> float:
  """Share of pad slots (input_mask == 0; packed rows hold document numbers 1, 2, ...) in the first `batches` training batches of `cfg`'s
  recipe (phase 0 or 1) on PREPARED_DIR: what the train step computes on and throws away."""
  from bertjax.train.pretrain import pretrain_task
  c = copy.deepcopy(cfg)
  with c.unlocked():
    c.data.prepared_dir = os.path.abspath(prepared_dir)
  task = pretrain_task(c, prepared_dir)
  it = task.train_iter if phase == 0 else task.make_phase2_iter()
  real = slots = 0
  for _ in range(batches):
    try:
      mask = np.asarray(next(it)["input_mask"]) > 0      # [B, S]; packed rows number documents
    except StopIteration:
      break
    real += int(mask.sum())
    slots += mask.size
  if slots == 0:
    raise UserError(f"{prepared_dir}: the training data yielded no batch")
  return 1.0 - real / slots


def train_token_rate(workdir: str) -> float:
  """Token slots (B x S, pad included) per second of WORKDIR's train steps, from metrics.jsonl:
  each logged window's steps over its time (the compile step and evaluations excluded, as the
  trainer logs them). Multiply by (1 - padding fraction) for real tokens per second."""
  from bertjax.train import metrics as mlib
  slots = seconds = 0.0   # per row of the (constant) global batch: B cancels
  prev = 0
  for r in mlib.read_metrics(workdir):
    if "tokens_per_s" not in r or not r.get("seq_per_s"):
      continue
    n = r["step"] - prev - (1 if prev == 0 else 0)     # the first step compiles, untimed
    prev = r["step"]
    if n <= 0:
      continue
    s = round(r["tokens_per_s"] / r["seq_per_s"])      # S of this window's phase
    slots += n * s
    seconds += n / r["seq_per_s"]
  if seconds == 0:
    raise UserError(f"{workdir}: metrics.jsonl has no throughput records (train longer than "
                    f"train.log_every steps)")
  return slots / seconds
