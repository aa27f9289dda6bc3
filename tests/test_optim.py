"""Optimizer: BERT's weight-decay mask, schedules, clipping, frozen leaves without state."""
import jax
import jax.numpy as jnp
import numpy as np
import optax

from bertjax.config import base_config, model_config
from bertjax.model import BertForPreTraining
from bertjax.optim import clip_by_global_norm, decay_mask, make_optimizer, make_schedule


def _params():
  c = model_config("tiny", vocab_size=64, max_position_embeddings=16)
  c.hidden_size, c.num_attention_heads, c.intermediate_size, c.num_hidden_layers = 16, 2, 32, 1
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(  # the real tree, no compute; values do not matter here
      lambda: BertForPreTraining(c).init(jax.random.PRNGKey(0), ids, ids, ids, None))["params"]
  rng = np.random.default_rng(0)
  return jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(np.float32), shapes)


def _ocfg(**kw):
  o = base_config().optim
  for k, v in kw.items():
    o[k] = v
  return o


def test_decay_mask_skips_layernorm_and_biases():
  flat = {jax.tree_util.keystr(p): m for p, m in
          jax.tree_util.tree_flatten_with_path(decay_mask(_params()))[0]}
  assert flat["['bert']['layer_0']['intermediate']['kernel']"]
  assert flat["['bert']['embeddings']['word_embeddings']"]
  assert not flat["['bert']['layer_0']['intermediate']['bias']"]
  assert not flat["['bert']['layer_0']['output_norm']['scale']"]
  assert not flat["['bert']['embeddings']['LayerNorm']['bias']"]
  assert not flat["['mlm_output_bias']"]


def test_weight_decay_applies_only_where_masked():
  params = _params()
  tx, _ = make_optimizer(_ocfg(warmup_steps=0, learning_rate=0.1, clip_norm=0.0), 10)
  zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, tx.init(params), params)  # zero grads: only decay
  mask = decay_mask(params)
  for u, p, m in zip(jax.tree_util.tree_leaves(updates), jax.tree_util.tree_leaves(params),
                     jax.tree_util.tree_leaves(mask)):
    expected = -0.1 * 0.01 * p if m else jnp.zeros_like(p)
    np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-7)


def test_schedules():
  lin = make_schedule(_ocfg(learning_rate=1.0, warmup_steps=10, end_learning_rate=0.0), 110)
  assert float(lin(0)) == 0.0 and abs(float(lin(5)) - 0.5) < 1e-6
  assert abs(float(lin(10)) - 1.0) < 1e-6 and abs(float(lin(60)) - 0.5) < 1e-6
  assert abs(float(lin(110))) < 1e-6
  cos = make_schedule(_ocfg(learning_rate=1.0, warmup_steps=10, schedule="cosine"), 110)
  assert abs(float(cos(60)) - 0.5) < 1e-6 and float(cos(35)) > 0.5 + 0.1


def test_global_norm_clipping():
  params = {"w": jnp.ones((4,))}
  tx, _ = make_optimizer(_ocfg(name="adamw", clip_norm=1.0, warmup_steps=0, weight_decay=0.0,
                               learning_rate=1.0), 10)
  # Adam normalises magnitudes, so check the clipped gradient itself: the first moment.
  _, state = tx.update({"w": jnp.full((4,), 100.0)}, tx.init(params), params)
  mu = state[1][0].mu["w"]
  np.testing.assert_allclose(np.linalg.norm(mu / 0.1), 1.0, rtol=1e-5)  # (1 - b1) * clipped


def test_clipping_matches_optax():
  """One scalar factor instead of optax's per-element select: the same updates (bitwise when
  the norm is under the limit, within rounding when clipping acts) and the same (empty) state,
  so checkpoints written with optax's clipping restore."""
  params = _params()
  ours, theirs = clip_by_global_norm(1.0), optax.clip_by_global_norm(1.0)
  assert jax.tree_util.tree_structure(ours.init(params)) == \
      jax.tree_util.tree_structure(theirs.init(params))
  norm = float(optax.tree.norm(params))
  for scale, exact in ((0.5 / norm, True), (30.0 / norm, False)):   # norm 0.5, then 30
    grads = jax.tree_util.tree_map(lambda p: p * scale, params)
    a, _ = jax.jit(ours.update)(grads, ours.init(params))
    b, _ = jax.jit(theirs.update)(grads, theirs.init(params))
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
      if exact:
        np.testing.assert_array_equal(x, y)
      else:
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-9)
    assert abs(float(optax.tree.norm(a)) - min(1.0, scale * norm)) < 1e-5


def test_frozen_leaves_have_no_state_and_do_not_move():
  params = _params()
  frozen = lambda path: path[0] == "bert"
  for name in ("adamw", "lamb"):
    tx, _ = make_optimizer(_ocfg(name=name, warmup_steps=0), 10, frozen=frozen)
    state = tx.init(params)
    n_params = len(jax.tree_util.tree_leaves(params))
    n_head = len(jax.tree_util.tree_leaves({k: v for k, v in params.items() if k != "bert"}))
    # Adam moments (mu, nu) exist only for the trainable head leaves.
    n_state = len([x for x in jax.tree_util.tree_leaves(state) if x.ndim > 0])
    assert n_state == 2 * n_head < n_params
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    updates, _ = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new["bert"]),
                                                     jax.tree_util.tree_leaves(params["bert"])))
    assert not np.array_equal(new["nsp"]["kernel"], params["nsp"]["kernel"])
