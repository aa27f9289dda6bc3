"""The training state: everything a bitwise-exact resume needs from the device side.

`rng` is the run's base key (raw uint32 key data, so it checkpoints as a plain array); the
dropout key of step s is fold_in(rng, s) -- never a carried, split key -- so a resumed run
draws the same masks as one that never stopped. The data iterator's position is saved beside
this state by the checkpointer (it lives on the host).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from bertjax import sharding as shd


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array        # int32 scalar: optimizer steps taken
  params: Any            # f32 master weights
  opt_state: Any         # optax state (no entries for frozen leaves)
  rng: jax.Array         # uint32 [2]: a raw PRNGKey derived from train.seed


def batch_spec(batch) -> dict:
  """Shapes and dtypes of a batch (numpy arrays or ShapeDtypeStructs)."""
  return {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in batch.items()}


def init_state(init_params, tx: optax.GradientTransformation, seed: int, spec: dict) -> TrainState:
  """Pure: build the initial state from a batch spec (zeros of those shapes feed the init)."""
  key = jax.random.PRNGKey(seed)
  example = {k: jnp.zeros(v.shape, v.dtype) for k, v in spec.items()}
  params = init_params(jax.random.fold_in(key, 0), example)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                    rng=jax.random.fold_in(key, 1))


def abstract_state(init_params, tx, seed: int, example_batch, mesh):
  """(ShapeDtypeStruct pytree with shardings, shardings pytree) without allocating anything."""
  spec = batch_spec(example_batch)
  shapes = jax.eval_shape(lambda: init_state(init_params, tx, seed, spec))
  shardings = shd.state_shardings(mesh, shapes)
  abstract = jax.tree_util.tree_map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings)
  return abstract, shardings


def create_state(init_params, tx, seed: int, example_batch, mesh) -> TrainState:
  """Initialise directly into the target shardings (no host copy of the full model)."""
  _, shardings = abstract_state(init_params, tx, seed, example_batch, mesh)
  spec = batch_spec(example_batch)
  return jax.jit(lambda: init_state(init_params, tx, seed, spec), out_shardings=shardings)()


def dropout_key(rng: jax.Array, step) -> jax.Array:
  """The dropout key of optimizer step `step` (a pure function of the run's key and the step)."""
  return jax.random.fold_in(rng, step)
