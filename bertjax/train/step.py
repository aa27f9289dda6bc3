"""Pure, jitted train and eval steps.

train_step(state, batch) -> (state, metrics): one optimizer step on a global batch [B, ...]
(split over the mesh's batch axes), the state donated. With grad_accum_steps = A the batch is
cut into A micro-batches of B/A and `lax.scan` sums their gradients: when the task provides
`loss_denominators` (totals over the whole batch, e.g. masked tokens), each micro-batch loss is
already divided by the big batch's totals, so the summed gradient IS the big-batch gradient.

Micro-batch a takes rows {i * A + a}: every device holds B/(A * devices) rows of every
micro-batch, so the split is a local reshape (no data moves between devices).

deterministic_reduce=True (train.deterministic_reduce): each device computes the loss, metric
sums and gradients of its own rows (`jax.shard_map`; dropout keyed by the device's position),
then they are all-gathered and added in device order. XLA's all-reduce adds in an order that
depends on how devices are spread over processes (in-process vs gloo/NCCL rings), so 2 x 4
and 1 x 8 devices would differ in the last bits; in device order they are bitwise equal. Costs
one gradient copy per device of memory; needs replicated params (mesh.fsdp=1).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import sharding as shd
from bertjax.errors import UserError
from bertjax.optim import frozen_labels
from bertjax.train.state import TrainState, dropout_key


def _is_sum(name: str, metrics: dict) -> bool:
  return name.endswith("_weight") or name + "_weight" in metrics


def combine_host(metrics: dict) -> dict:
  """Host side: {x, x_weight} -> x / x_weight as floats; other entries to float."""
  out = {}
  for k, v in metrics.items():
    if k.endswith("_weight"):
      continue
    w = metrics.get(k + "_weight")
    out[k] = float(v) / max(float(w), 1e-9) if w is not None else float(v)
  return out


class StepFn:
  """A jitted step plus a count of how many times Python traced it (a test asserts 1)."""

  def __init__(self, fn, **jit_kwargs):
    self.traces = 0

    def counted(*args):
      self.traces += 1
      return fn(*args)
    self.jitted = jax.jit(counted, **jit_kwargs)

  def __call__(self, *args):
    return self.jitted(*args)

  def lower(self, *args):
    """`step.lower(state_abstract, batch_abstract).compile()`: AOT compile without data."""
    return self.jitted.lower(*args)


def make_train_step(loss_fn: Callable, tx: optax.GradientTransformation, mesh, state_shardings, *,
                    schedule: Optional[Callable] = None, grad_accum_steps: int = 1,
                    loss_denominators: Optional[Callable] = None,
                    frozen: Optional[Callable[[tuple], bool]] = None,
                    nan_policy: str = "stop", donate: bool = True,
                    deterministic_reduce: bool = False) -> StepFn:
  """Build the jitted train step. `state_shardings` from `state.abstract_state`."""
  accum = grad_accum_steps
  n_dev = shd.mesh_size(mesh)

  def loss_of(params, batch, key, den):
    if frozen is not None:
      # No gradient flows into frozen leaves: XLA drops their backward work.
      labels = frozen_labels(params, frozen)
      params = jax.tree_util.tree_map(
          lambda p, l: jax.lax.stop_gradient(p) if l == "frozen" else p, params, labels)
    return loss_fn(params, batch, key, den) if den is not None else loss_fn(params, batch, key)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def grads_of(params, batch, key, den, local: bool = False):
    """(loss, metrics, grads) of `batch`, summed over its micro-batches. local: inside
    shard_map (per-device rows; no sharding constraints there)."""
    if accum == 1:
      (loss, metrics), grads = grad_fn(params, batch, key, den)
      return loss, metrics, grads

    def split(x):  # [B, ...] -> [A, B/A, ...]; row i*A + a goes to micro-batch a
      x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
      return x if local else jax.lax.with_sharding_constraint(
          x, NamedSharding(mesh, P(None, shd.BATCH_AXES)))
    micro = jax.tree_util.tree_map(split, batch)

    def body(carry, xs):
      mb, i = xs
      (l, m), g = grad_fn(params, mb, jax.random.fold_in(key, i), den)
      acc = (carry[0] + l, jax.tree_util.tree_map(jnp.add, carry[1], m),
             jax.tree_util.tree_map(jnp.add, carry[2], g))
      return acc, None

    first = jax.tree_util.tree_map(lambda x: x[0], micro)
    (l_shape, m_shape), g_shape = jax.eval_shape(grad_fn, params, first, key, den)
    zeros = lambda t: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), t)
    init = (jnp.zeros((), l_shape.dtype), zeros(m_shape), zeros(g_shape))
    (loss, metrics, grads), _ = jax.lax.scan(body, init, (micro, jnp.arange(accum)))
    if den is None:  # means per micro-batch: average them
      loss = loss / accum
      grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
    metrics = {k: v if _is_sum(k, metrics) else v / accum for k, v in metrics.items()}
    return loss, metrics, grads

  def per_device_then_ordered_sum(params, batch, key, den):
    """grads_of on each device's rows, then the devices' results added in device order."""
    def local(params, batch, key, den):
      idx = jax.lax.axis_index(shd.BATCH_AXES)          # this device's position, 0..D-1
      loss, metrics, grads = grads_of(params, batch, jax.random.fold_in(key, idx), den, True)

      def ordered_sum(x):
        xs = jax.lax.all_gather(x, shd.BATCH_AXES)      # [D, ...] in device order
        total, _ = jax.lax.scan(lambda c, y: (c + y, None), xs[0], xs[1:])
        return total
      loss, metrics, grads = jax.tree_util.tree_map(ordered_sum, (loss, metrics, grads))
      if den is None:  # per-device means: average them
        loss = loss / n_dev
        grads = jax.tree_util.tree_map(lambda g: g / n_dev, grads)
      metrics = {k: v if _is_sum(k, metrics) else v / n_dev for k, v in metrics.items()}
      return loss, metrics, grads

    rep = P()
    return jax.shard_map(
        local, mesh=mesh, in_specs=(rep, P(shd.BATCH_AXES), rep, rep),
        out_specs=rep, check_vma=False)(params, batch, key, den)

  if deterministic_reduce and mesh.shape["fsdp"] > 1:
    raise UserError("train.deterministic_reduce needs replicated params: set mesh.fsdp=1")

  def train_step(state: TrainState, batch: dict):
    key = dropout_key(state.rng, state.step)
    den = loss_denominators(batch) if loss_denominators is not None else None
    if deterministic_reduce:
      loss, metrics, grads = per_device_then_ordered_sum(state.params, batch, key, den)
    else:
      loss, metrics, grads = grads_of(state.params, batch, key, den)

    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if nan_policy == "skip":  # keep the old weights and moments, still advance the step
      new = new.replace(
          params=jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), params, state.params),
          opt_state=jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), opt_state,
                                           state.opt_state))
    out = dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    if schedule is not None:
      out["lr"] = jnp.asarray(schedule(state.step), jnp.float32)
    return new, out

  return StepFn(train_step,
                in_shardings=(state_shardings, shd.batch_sharding(mesh)),
                out_shardings=(state_shardings, shd.replicated(mesh)),
                donate_argnums=(0,) if donate else ())


def make_eval_step(metrics_fn: Callable, mesh, params_shardings) -> StepFn:
  """metrics_fn(params, batch) -> {x, x_weight} sums over the (global) batch, jitted."""
  return StepFn(metrics_fn, in_shardings=(params_shardings, shd.batch_sharding(mesh)),
                out_shardings=shd.replicated(mesh))
