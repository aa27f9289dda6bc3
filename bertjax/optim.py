"""Optimizers and learning-rate schedules (optax).

BERT's recipe: AdamW with beta2 0.999, eps 1e-6, weight decay 0.01 on every weight except
LayerNorm scales and biases, linear warmup then linear decay to `end_learning_rate`; LAMB
(You et al., 2019) for large batches; gradients clipped by global norm first.
Schedules (optim.schedule): linear | cosine decay after the warmup; wsd, warmup-stable-decay
(trapezoidal: linear warmup, flat at the peak, linear decay over the last `decay_fraction` of
the steps; Zhai et al. 2022, Hu et al. 2024); one_cycle, optax's cosine one-cycle (cramming,
Geiping & Goldstein 2022: the peak at the end of the warmup). A schedule is a pure function of
the step and num_steps, so a resumed run with the same num_steps continues it exactly; budgets
(`budget_steps`) fix num_steps once, and the trainer keeps the resolved value.

Frozen parameters (a task's `frozen(path)`) are routed to `optax.set_to_zero()` with
`optax.multi_transform`: they get no Adam moments (no optimizer memory) and never change.
Clipping sits inside the trainable branch, so the clipping norm covers trainable leaves only.
Layer-wise learning-rate decay (`optim.layer_lr_decay` = d < 1, ELECTRA's recipe): the updates
of transformer layer i (0-based, of L) are scaled by d^(L - i), the embeddings' by d^(L + 1), and
everything else (pooler, task head, pretraining heads) by 1 -- a per-leaf lr multiplier applied
after the optimizer, so weight decay follows the same per-layer lr.
Note: optax's AdamW applies Adam's bias correction (as Hugging Face's AdamW does; the original
TF BERT optimizer did not) -- with warmup the difference vanishes after a few hundred steps.
"""
from __future__ import annotations

from typing import Callable, Optional

import re

import jax
import jax.numpy as jnp
import optax


def warmup_steps(ocfg, num_steps: int) -> int:
  """optim.warmup_fraction x num_steps when set, else optim.warmup_steps (< num_steps)."""
  frac = ocfg.get("warmup_fraction", 0.0)
  warmup = int(round(frac * num_steps)) if frac > 0 else ocfg.warmup_steps
  return min(warmup, max(num_steps - 1, 0))


def make_schedule(ocfg, num_steps: int) -> optax.Schedule:
  """Linear warmup from 0 to `learning_rate`, then (schedule) linear / cosine decay to
  `end_learning_rate` at `num_steps`, or wsd / one_cycle (see the module doc)."""
  peak, end = ocfg.learning_rate, ocfg.end_learning_rate
  warmup = warmup_steps(ocfg, num_steps)
  decay_steps = max(num_steps - warmup, 1)
  if ocfg.schedule == "one_cycle":
    # optax: from peak/div_factor up (cosine) to the peak at pct_start, then down to
    # peak/(div_factor * final_div_factor) at num_steps
    return optax.cosine_onecycle_schedule(max(num_steps, 1), peak,
                                          pct_start=max(warmup, 1) / max(num_steps, 2))
  if ocfg.schedule == "wsd":
    cool = min(int(round(ocfg.get("decay_fraction", 0.2) * num_steps)), decay_steps)
    parts = [optax.constant_schedule(peak), optax.linear_schedule(peak, end, max(cool, 1))]
    bounds = [num_steps - cool]
    if warmup:
      parts, bounds = [optax.linear_schedule(0.0, peak, warmup)] + parts, [warmup] + bounds
    return optax.join_schedules(parts, bounds)
  if ocfg.schedule == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
  else:
    decay = optax.linear_schedule(peak, end, decay_steps)
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def budget_steps(tcfg, tokens_per_step: int, step_seconds: float | None = None) -> int:
  """train.num_steps under a budget: budget_tokens / tokens per step (rounded up), or
  budget_minutes of train steps at `step_seconds` each (rounded down, at least 1); without a
  budget, train.num_steps itself."""
  if tcfg.get("budget_tokens", 0) > 0:
    return max(1, -(-int(tcfg.budget_tokens) // int(tokens_per_step)))
  if tcfg.get("budget_minutes", 0.0) > 0:
    if not step_seconds or step_seconds <= 0:
      raise ValueError("budget_minutes needs a measured step time")
    return max(1, int(tcfg.budget_minutes * 60.0 / step_seconds))
  return tcfg.num_steps


def _leaf_name(path) -> str:
  last = path[-1]
  return str(getattr(last, "key", getattr(last, "name", last)))


def decay_mask(params):
  """True where weight decay applies: not LayerNorm scales, not biases (incl. mlm_output_bias)."""
  def decays(path, _):
    name = _leaf_name(path)
    return not (name == "scale" or name.endswith("bias"))
  return jax.tree_util.tree_map_with_path(decays, params)


def path_keys(path) -> tuple:
  """A jax key path as a tuple of plain strings, e.g. ('bert', 'layer_0', 'output', 'kernel')."""
  return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def frozen_labels(params, frozen: Callable[[tuple], bool]):
  """'frozen' / 'train' label per leaf from a predicate on the leaf's path tuple."""
  return jax.tree_util.tree_map_with_path(
      lambda p, _: "frozen" if frozen(path_keys(p)) else "train", params)


_LAYER = re.compile(r"layer_(\d+)$")


def layer_lr_scales(params, decay: float):
  """Per-leaf lr multiplier for layer-wise decay (see the module doc); L = the number of
  bert/layer_* blocks in `params`."""
  def layer(path):
    m = _LAYER.match(path[1]) if len(path) > 1 and path[0] == "bert" else None
    return int(m.group(1)) if m else None
  paths = [path_keys(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  n = 1 + max((i for i in map(layer, paths) if i is not None), default=-1)

  def scale(path, _):
    path = path_keys(path)
    if len(path) > 1 and path[0] == "bert" and path[1] == "embeddings":
      return decay ** (n + 1)
    i = layer(path)
    return 1.0 if i is None else decay ** (n - i)
  return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
  """Multiply each leaf's update by its `layer_lr_scales` factor (stateless)."""
  def init(params):
    del params
    return optax.EmptyState()

  def update(updates, state, params=None):
    del params
    scales = layer_lr_scales(updates, decay)
    return jax.tree_util.tree_map(lambda u, s: u if s == 1.0 else u * s, updates, scales), state
  return optax.GradientTransformation(init, update)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Updates scaled by max_norm / norm when their global norm exceeds max_norm: the rule of
  `optax.clip_by_global_norm` (and of torch's clip_grad_norm_), applied as one scalar factor.

  optax selects per element between t and t / norm * max_norm, so every element pays a divide
  whether or not clipping acts, once in each Adam moment that reads the clipped gradient: on an
  AVX2 XLA:CPU core that made clipping + AdamW over MiniLM's 22.9M weights 90 ms an update,
  against 33 ms with one factor (benchmarks/bench_optim.py, results.md). Identical updates
  when no clipping happens; otherwise equal up to the rounding of t x (max_norm / norm)
  against (t / norm) x max_norm.
  The state is optax's empty state, so checkpoints are unchanged."""
  def update(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    factor = jnp.where(norm < max_norm, 1.0, max_norm / norm)                  # scalar
    return jax.tree_util.tree_map(lambda t: t * factor.astype(t.dtype), updates), state
  return optax.GradientTransformation(optax.init_empty_state, update)


def make_optimizer(ocfg, num_steps: int,
                   frozen: Optional[Callable[[tuple], bool]] = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optax chain for `ocfg` (config.optim) and its schedule (for logging the lr)."""
  schedule = make_schedule(ocfg, num_steps)
  if ocfg.name == "lamb":
    opt = optax.lamb(schedule, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps,
                     weight_decay=ocfg.weight_decay, mask=decay_mask)
  elif ocfg.name == "adamw":
    opt = optax.adamw(schedule, b1=ocfg.b1, b2=ocfg.b2, eps=ocfg.eps,
                      weight_decay=ocfg.weight_decay, mask=decay_mask)
  else:
    raise ValueError(f"optim.name={ocfg.name!r}")
  tx = optax.chain(clip_by_global_norm(ocfg.clip_norm), opt) if ocfg.clip_norm > 0 else opt
  if frozen is not None:
    tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                               lambda params: frozen_labels(params, frozen))
  decay = ocfg.get("layer_lr_decay", 1.0)
  if decay != 1.0:  # after the frozen split: sees the whole tree, so L counts every layer
    tx = optax.chain(tx, scale_by_layer(decay))
  return tx, schedule
