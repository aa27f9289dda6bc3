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
import numpy as np
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


def create_state(init_params, tx, seed: int, example_batch, mesh, load=None,
                 abstract=None) -> TrainState:
  """Initialise directly into the target shardings (no host copy of the full model).

  `load` (fresh params -> params with pretrained values, e.g. an --init encoder) is given the
  fresh tree as ShapeDtypeStructs and may replace any subtree with host arrays; only the leaves
  it leaves in place are initialised on the device. The values are those of a full init: the
  same key and the same init function, whose other outputs the compiler drops. That drop is
  the point: compiling the random init of a whole encoder only to overwrite it cost a
  fine-tuning job a sizeable part of its wall time on a CPU (all-MiniLM-L6-v2: the largest
  compile of the job). `abstract`: `abstract_state`'s pair, when the caller has it (each trace
  of the model's init costs ~0.4 s for MiniLM on a CPU core)."""
  abstract, shardings = abstract or abstract_state(init_params, tx, seed, example_batch, mesh)
  spec = batch_spec(example_batch)
  if load is None:
    return jax.jit(lambda: init_state(init_params, tx, seed, spec), out_shardings=shardings)()

  def fresh_params():
    key = jax.random.PRNGKey(seed)
    example = {k: jnp.zeros(v.shape, v.dtype) for k, v in spec.items()}
    return init_params(jax.random.fold_in(key, 0), example)          # as in init_state

  shapes = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                  abstract.params)                 # = eval_shape(fresh_params)
  merged = load(shapes)
  fresh_leaves, treedef = jax.tree_util.tree_flatten(shapes)
  merged_leaves = treedef.flatten_up_to(merged)
  todo = [i for i, (a, b) in enumerate(zip(fresh_leaves, merged_leaves)) if b is a]
  param_shardings = treedef.flatten_up_to(shardings.params)

  def fresh_leaves_todo():
    leaves = jax.tree_util.tree_leaves(fresh_params())
    return [leaves[i] for i in todo]

  made = jax.jit(fresh_leaves_todo, out_shardings=[param_shardings[i] for i in todo])()
  made = dict(zip(todo, made))
  leaves = [made[i] if i in made else place(x, param_shardings[i])
            for i, x in enumerate(merged_leaves)]
  params = jax.tree_util.tree_unflatten(treedef, leaves)
  rest = jax.jit(lambda p: (jnp.zeros((), jnp.int32), tx.init(p),
                            jax.random.fold_in(jax.random.PRNGKey(seed), 1)),
                 out_shardings=(shardings.step, shardings.opt_state, shardings.rng))(params)
  return TrainState(step=rest[0], params=params, opt_state=rest[1], rng=rest[2])


def place(x, sharding) -> jax.Array:
  """A host array (every process holds the same values) -> a global array on `sharding`."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def dropout_key(rng: jax.Array, step) -> jax.Array:
  """The dropout key of optimizer step `step` (a pure function of the run's key and the step)."""
  return jax.random.fold_in(rng, step)
