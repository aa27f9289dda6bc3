"""Pure, jitted train and eval steps.

train_step(state, batch) -> (state, metrics): one optimizer step on a global batch [B, ...]
(split over the mesh's batch axes), the state donated. With grad_accum_steps = A the batch is
cut into A micro-batches of B/A and `lax.scan` sums their gradients: when the task provides
`loss_denominators` (totals over the whole batch, e.g. masked tokens), each micro-batch loss is
already divided by the big batch's totals, so the summed gradient IS the big-batch gradient.

Micro-batch a takes rows {i * A + a}: every device holds B/(A * devices) rows of every
micro-batch, so the split is a local reshape (no data moves between devices).
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from bertjax import sharding as shd
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
                    nan_policy: str = "stop", donate: bool = True) -> StepFn:
  """Build the jitted train step. `state_shardings` from `state.abstract_state`."""
  accum = grad_accum_steps

  def loss_of(params, batch, key, den):
    if frozen is not None:
      # No gradient flows into frozen leaves: XLA drops their backward work.
      labels = frozen_labels(params, frozen)
      params = jax.tree_util.tree_map(
          lambda p, l: jax.lax.stop_gradient(p) if l == "frozen" else p, params, labels)
    return loss_fn(params, batch, key, den) if den is not None else loss_fn(params, batch, key)

  grad_fn = jax.value_and_grad(loss_of, has_aux=True)

  def train_step(state: TrainState, batch: dict):
    key = dropout_key(state.rng, state.step)
    den = loss_denominators(batch) if loss_denominators is not None else None
    if accum == 1:
      (loss, metrics), grads = grad_fn(state.params, batch, key, den)
    else:
      def split(x):  # [B, ...] -> [A, B/A, ...]; row i*A + a goes to micro-batch a
        x = x.reshape((x.shape[0] // accum, accum) + x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(
            x, NamedSharding(mesh, P(None, shd.BATCH_AXES)))
      micro = jax.tree_util.tree_map(split, batch)

      def body(carry, xs):
        mb, i = xs
        (l, m), g = grad_fn(state.params, mb, jax.random.fold_in(key, i), den)
        acc = (carry[0] + l, jax.tree_util.tree_map(jnp.add, carry[1], m),
               jax.tree_util.tree_map(jnp.add, carry[2], g))
        return acc, None

      first = jax.tree_util.tree_map(lambda x: x[0], micro)
      (l_shape, m_shape), g_shape = jax.eval_shape(grad_fn, state.params, first, key, den)
      zeros = lambda t: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), t)
      init = (jnp.zeros((), l_shape.dtype), zeros(m_shape), zeros(g_shape))
      (loss, metrics, grads), _ = jax.lax.scan(body, init, (micro, jnp.arange(accum)))
      if den is None:  # means per micro-batch: average them
        loss = loss / accum
        grads = jax.tree_util.tree_map(lambda g: g / accum, grads)
      metrics = {k: v if _is_sum(k, metrics) else v / accum for k, v in metrics.items()}

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
