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
