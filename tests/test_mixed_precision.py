"""The speed-ups in bertjax.model keep the function: bf16 backward, cheap dropout bits.

- `matmul` in bfloat16 runs the backward pass as bf16 x bf16 -> f32 matmuls too (checked in the
  compiled HLO: autodiff alone gives f32 x f32 there, ~4x slower on CPU), with gradients close
  to float32 autodiff and the kernels' gradients kept in float32;
- `Dropout` drops a `rate` fraction, rescales by 1/keep, and its masks are a pure function of
  the key with no visible correlation between neighbours.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax import model as M
from bertjax.config import model_config


class _Cfg:
  def __init__(self, dtype):
    self.dtype = dtype


SPECS = [  # the model's matmuls: Dense, fused QKV, attention scores and context, tied MLM head
    ("abk,kn->abn", (4, 16, 32), (32, 48)),
    ("bqnd,bknd->bnqk", (2, 16, 4, 8), (2, 16, 4, 8)),
    ("bnqk,bknd->bqnd", (2, 4, 16, 16), (2, 16, 4, 8)),
    ("bph,hv->bpv", (2, 5, 32), (32, 300)),
]


@pytest.mark.parametrize("spec,sa,sb", SPECS, ids=[s[0] for s in SPECS])
def test_bf16_matmul_gradients_match_f32(spec, sa, sb):
  ka, kb, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  a = jax.random.normal(ka, sa, jnp.float32)
  b = jax.random.normal(kb, sb, jnp.float32)
  out_shape = jax.eval_shape(lambda: jnp.einsum(spec, a, b)).shape
  g = jax.random.normal(kg, out_shape, jnp.float32)

  def grads(dtype):
    y, vjp = jax.vjp(lambda a, b: M.matmul(spec, a, b, _Cfg(dtype)), a, b)
    return y, vjp(g)

  y32, (da32, db32) = grads("float32")
  y16, (da16, db16) = grads("bfloat16")
  assert y16.dtype == jnp.float32 and da16.dtype == db16.dtype == jnp.float32
  for ref, got in ((y32, y16), (da32, da16), (db32, db16)):
    # bf16 operands: ~3 significant digits, errors grow like sqrt(contraction length).
    np.testing.assert_allclose(got, ref, rtol=0, atol=0.05 * float(jnp.abs(ref).max()))
  # ... and they really are the bf16 numbers, not an f32 computation in disguise.
  assert float(jnp.abs(da16 - da32).max()) > 0


def _dots(hlo: str):
  """[(lhs dtype, rhs dtype, out dtype, op_name)] of every dot in an optimized HLO module."""
  types = dict(re.findall(r"%([\w.\-]+) = (\w+)\[", hlo))
  out = []
  for m in re.finditer(r"%[\w.\-]+ = (\w+)\[[^\n]*? dot\(%([\w.\-]+), %([\w.\-]+)\)[^\n]*", hlo):
    name = re.search(r'op_name="([^"]*)"', m.group(0))
    out.append((types.get(m.group(2)), types.get(m.group(3)), m.group(1),
                name.group(1) if name else ""))
  return out


def test_bf16_training_gradient_is_bf16_matmuls_forward_and_backward():
  c = model_config("tiny")
  c.dtype = "bfloat16"
  model = M.BertForPreTraining(c)
  ids = jnp.ones((4, 32), jnp.int32)
  pos = jnp.ones((4, 5), jnp.int32)
  params = model.init(jax.random.PRNGKey(0), ids, ids * 0, ids, pos)["params"]

  def loss(p):
    mlm, nsp = model.apply({"params": p}, ids, ids * 0, ids, pos, deterministic=False,
                           rngs={"dropout": jax.random.PRNGKey(1)})
    return jax.nn.logsumexp(mlm, -1).mean() + nsp.mean()

  dots = _dots(jax.jit(jax.grad(loss)).lower(params).compile().as_text())
  fast = [d for d in dots if d[:3] == ("bf16", "bf16", "f32")]
  backward = [d for d in fast if "transpose(" in d[3]]
  # Forward and backward of every layer matmul: 2 layers x (Q, K, V, out, FFN in, FFN out,
  # scores, context) x (1 forward + 2 backward), plus the MLM head's three.
  assert len(backward) >= 2 * 8 * 2 + 2, len(backward)
  slow = [d for d in dots if d[:3] != ("bf16", "bf16", "f32")]
  # Only the tiny [B, H] pooler / NSP weight gradients (and the bias-gradient matvec) may stay
  # in f32: nothing from the encoder layers or the MLM projection.
  assert all("layer_" not in d[3] and "bph" not in d[3] for d in slow), slow


def _drop(x, rate, seed):
  return M.Dropout(rate).apply({}, x, deterministic=False,
                               rngs={"dropout": jax.random.PRNGKey(seed)})


def test_dropout_rate_scale_and_determinism():
  x = jnp.ones((64, 128, 128), jnp.float32)          # 1M elements
  y = _drop(x, 0.1, 0)
  dropped = float(jnp.mean(y == 0))
  assert abs(dropped - 0.1) < 4 * np.sqrt(0.1 * 0.9 / x.size)     # 4 sigma
  assert np.allclose(np.unique(np.asarray(y)), [0.0, 1 / 0.9])      # inverted scaling
  assert abs(float(y.mean()) - 1.0) < 0.005
  assert jnp.array_equal(y, _drop(x, 0.1, 0))                      # pure function of the key
  other = _drop(x, 0.1, 1)
  assert float(jnp.mean((y == 0) & (other == 0))) == pytest.approx(0.01, abs=0.002)  # independent
  np.testing.assert_array_equal(_drop(x, 0.0, 0), x)
  np.testing.assert_array_equal(M.Dropout(0.1).apply({}, x, deterministic=True), x)


def test_dropout_masks_have_no_neighbour_correlation():
  keep = np.asarray(_drop(jnp.ones((1 << 20,), jnp.float32), 0.5, 3) > 0, np.float64)
  for lag in (1, 2, 16, 128, 4096):
    corr = np.corrcoef(keep[:-lag], keep[lag:])[0, 1]
    assert abs(corr) < 5 / np.sqrt(keep.size), (lag, corr)
  # Bits of consecutive counters are balanced (a weak hash would bias low bits).
  bits = np.asarray(M.dropout_bits(jax.random.PRNGKey(5), (1 << 16,)))
  ones = np.unpackbits(bits.view(np.uint8)).mean()
  assert abs(ones - 0.5) < 0.003
