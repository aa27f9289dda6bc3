"""The trainer's pieces, built in one place: optimizer, state layout, initial state, step.

    pieces = setup.build(task, cfg, mesh, example_batch)
    state = pieces.init_state()              # params created already sharded
    step = pieces.make_step()                # the jitted, donated train step

`loop.train` uses it, and so do the benchmarks and the ahead-of-time compile (bertjax.aot),
so what they time or compile is the step training runs. `example_batch` gives the shapes
(numpy arrays or ShapeDtypeStructs); it is not consumed.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import optax

from bertjax.optim import make_optimizer
from bertjax.train.state import abstract_state, create_state
from bertjax.train.step import StepFn, make_train_step
from bertjax.train.task import TrainTask


@dataclasses.dataclass
class Pieces:
  task: TrainTask
  cfg: Any
  mesh: Any
  example: dict                      # the batch (or its spec) the shapes come from
  tx: optax.GradientTransformation   # config.optim, frozen leaves excluded
  schedule: Optional[Callable]       # step -> learning rate
  abstract: Any                      # TrainState of ShapeDtypeStructs with shardings
  shardings: Any                     # TrainState of NamedShardings

  def init_state(self, load=None):
    """A fresh TrainState from train.seed, initialised directly into its shardings; `load`
    (e.g. the task's load_pretrained) puts pretrained values in (train.state.create_state)."""
    return create_state(self.task.init_params, self.tx, self.cfg.train.seed, self.example,
                        self.mesh, load=load, abstract=(self.abstract, self.shardings))

  def make_step(self, *, donate: bool = True) -> StepFn:
    """The jitted train step of config.train (accumulation, NaN policy, reduction)."""
    t, task = self.cfg.train, self.task
    return make_train_step(
        task.loss_fn, self.tx, self.mesh, self.shardings, schedule=self.schedule,
        grad_accum_steps=t.grad_accum_steps, loss_denominators=task.loss_denominators,
        frozen=task.frozen, nan_policy=t.nan_policy, donate=donate,
        deterministic_reduce=t.get("deterministic_reduce", False))


def build(task: TrainTask, cfg, mesh, example_batch: dict) -> Pieces:
  """Optimizer (config.optim over train.num_steps) and the state's shapes and shardings."""
  tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps, task.frozen)
  abstract, shardings = abstract_state(task.init_params, tx, cfg.train.seed, example_batch, mesh)
  return Pieces(task, cfg, mesh, example_batch, tx, schedule, abstract, shardings)
