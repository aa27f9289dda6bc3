"""What the one trainer needs from a task (pretraining or any fine-tuning task).

The trainer (`bertjax.train.loop`) owns sharding, precision, the jitted step, optimizer,
gradient accumulation, checkpoints, metrics.jsonl, TensorBoard and the progress bar. A task
supplies only the model, a pure loss, its data and its evaluation.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator, Optional

import flax.linen as nn

Batch = dict  # str -> np.ndarray [B_local, ...] (int32/float32), this process's shard
Params = Any


@dataclasses.dataclass
class TrainTask:
  name: str
  # Flax module; `model.apply({"params": p}, **inputs, deterministic=..., rngs={"dropout": k})`
  # is called only from inside `loss_fn`, so its signature is the task's business.
  model: nn.Module
  # Initialise parameters from an example batch: (rng, batch) -> params (f32 pytree).
  init_params: Callable[[Any, Batch], Params]
  # Pure and jittable: (params, batch, dropout_rng) -> (scalar loss, {name: scalar} metrics).
  # Metrics must be means over the batch (or sums with a matching "_weight" entry) so that
  # gradient accumulation and data parallelism combine them exactly.
  loss_fn: Callable[[Params, Batch, Any], tuple[Any, dict]]
  # Training batches for this process: yields Batch; has get_state()/set_state() for resume.
  train_iter: Iterator[Batch]
  # Host-side evaluation: params -> {metric: float}; None = no evaluation.
  eval_fn: Optional[Callable[[Params], dict]] = None
  # Optional: load pretrained weights into a freshly initialised tree (fine-tuning, --init-from).
  load_pretrained: Optional[Callable[[Params], Params]] = None
  # Optional: names of parameter paths (tuples of keys) that must not train (frozen encoder).
  frozen: Optional[Callable[[tuple], bool]] = None

  # ---- Extensions used by the trainer (bertjax.train.loop); all optional.
  # Exact gradient accumulation of weighted losses: (whole step's global batch) -> {name: total}
  # (e.g. the number of masked tokens). When set, the trainer calls
  # `loss_fn(params, micro_batch, rng, denominators)` and the loss must divide its weighted sums
  # by these totals, so micro-batch losses add up to the big-batch loss. When None, `loss_fn`
  # returns a mean over its (micro-)batch and micro-batch losses/gradients are averaged.
  loss_denominators: Optional[Callable[[Batch], dict]] = None
  # Trainer-run evaluation (sharded, jitted once): `eval_batches()` yields this process's
  # batches (same layout as training; a short last batch is padded by the trainer with all-zero
  # rows, which the metric must weigh 0), `eval_metrics_fn(params, batch)` is pure and returns
  # {x, x_weight} sums; the trainer reports `eval_x = sum(x) / sum(x_weight)` over all batches.
  # Runs every `train.eval_every` steps and at the end, beside `eval_fn` if both are set.
  eval_batches: Optional[Callable[[], Iterator[Batch]]] = None
  eval_metrics_fn: Optional[Callable[[Params, Batch], dict]] = None
  # A second training phase (BERT's S=512 tail): from step `train.phase2_start` batches come from
  # `make_phase2_iter()` (the step is compiled once more for the new shapes). Its position is
  # saved like the first one's.
  make_phase2_iter: Optional[Callable[[], Iterator[Batch]]] = None
  # Model FLOPs of one training step for a global batch of these shapes ({name: shape}), for MFU.
  flops_per_step: Optional[Callable[[dict], float]] = None
  # Saved with checkpoints; a resume with a different tokenizer is refused (bertjax.checkpoint).
  tokenizer_identity: Optional[dict] = None
