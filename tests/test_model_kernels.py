"""The model's hand-written pieces compute what autodiff of the plain formulas computes.

- `gelu` (closed-form backward, erf form) is BERT's exact GELU, value and gradient;
- the bf16 matmul's weight gradient, computed transposed when the activation is the larger
  operand (FFN output kernel), equals the float32 autodiff gradient;
- `add_bias` (bias gradient as ones @ g) sums the cotangent over the leading axes, for 1-D
  biases and the [S, H] position embeddings.

Budget: < 10 s on 2 cores.
"""
import re
import math

import jax
import jax.numpy as jnp
import numpy as np

from bertjax import model as M


def _exact_gelu_f64(x):
  erf = np.vectorize(math.erf)
  return x * 0.5 * (1.0 + erf(x / math.sqrt(2.0)))


def _exact_dgelu_f64(x):
  erf = np.vectorize(math.erf)
  return 0.5 * (1.0 + erf(x / math.sqrt(2.0))) + x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def test_gelu_value_and_gradient_match_float64_reference():
  x = np.linspace(-9.0, 9.0, 4001, dtype=np.float32)
  x64 = x.astype(np.float64)
  y = np.asarray(M.gelu(jnp.asarray(x)))
  dy = np.asarray(jax.vmap(jax.grad(M.gelu))(jnp.asarray(x)))
  np.testing.assert_allclose(y, _exact_gelu_f64(x64), atol=5e-6, rtol=1e-5)
  np.testing.assert_allclose(dy, _exact_dgelu_f64(x64), atol=5e-6, rtol=1e-5)
  # And it is jax's exact (erfc) GELU to float32 rounding, value and autodiff gradient.
  ref = jax.nn.gelu(jnp.asarray(x), approximate=False)
  np.testing.assert_allclose(y, np.asarray(ref), atol=5e-6)
  dref = jax.vmap(jax.grad(lambda v: jax.nn.gelu(v, approximate=False)))(jnp.asarray(x))
  np.testing.assert_allclose(dy, np.asarray(dref), atol=5e-6)


def test_gelu_keeps_dtype_and_bf16_gradient_is_close():
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 64), jnp.float32) * 3
  g = jax.random.normal(jax.random.PRNGKey(1), x.shape, jnp.float32)
  xb = x.astype(jnp.bfloat16)
  yb, vjp = jax.vjp(M.gelu, xb)
  (dxb,) = vjp(g.astype(jnp.bfloat16))
  assert yb.dtype == jnp.bfloat16 and dxb.dtype == jnp.bfloat16
  # Against float32 on the same (bf16-rounded) inputs: only the output rounding differs.
  y32, vjp32 = jax.vjp(M.gelu, xb.astype(jnp.float32))
  (dx32,) = vjp32(g.astype(jnp.bfloat16).astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(yb, np.float32), np.asarray(y32), rtol=1e-2, atol=1e-2)
  np.testing.assert_allclose(np.asarray(dxb, np.float32), np.asarray(dx32), rtol=1e-2, atol=1e-2)


def test_weight_gradient_with_larger_activation_matches_f32_autodiff():
  class Cfg:
    dtype = "bfloat16"
  ka, kb, kg = jax.random.split(jax.random.PRNGKey(2), 3)
  x = jax.random.normal(ka, (4, 16, 96), jnp.float32)     # [B, S, I]: larger than g [B, S, H]
  w = jax.random.normal(kb, (96, 24), jnp.float32) * 0.1  # [I, H]
  g = jax.random.normal(kg, (4, 16, 24), jnp.float32)
  f = lambda x, w: jnp.sum(M.matmul("abk,kn->abn", x, w, Cfg()) * g)
  dx, dw = jax.grad(f, argnums=(0, 1))(x, w)
  # The reference: the two products in f32 on the bf16-rounded operands and cotangent.
  r = lambda v: v.astype(jnp.bfloat16).astype(jnp.float32)
  hi = jax.lax.Precision.HIGHEST
  dw_ref = jnp.einsum("abk,abn->kn", r(x), r(g), precision=hi)
  dx_ref = jnp.einsum("abn,kn->abk", r(g), r(w), precision=hi)
  assert dw.dtype == jnp.float32 and dw.shape == (96, 24)
  np.testing.assert_allclose(np.asarray(dw), np.asarray(dw_ref), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(dx), np.asarray(dx_ref), rtol=1e-5, atol=1e-4)
  # Computed as the transposed product [H, I] of bf16 operands with f32 accumulation.
  hlo = jax.jit(jax.grad(f, argnums=1)).lower(x, w).compile().as_text()
  assert re.search(r"f32\[24,96\]\S* (dot|fusion)\(", hlo), hlo
  for operands in re.findall(r"f32\[24,96\]\S* (?:dot|fusion)\(([^)]*)\)", hlo):
    for name in re.findall(r"%([\w.\-]+)", operands):
      assert re.search(rf"%{re.escape(name)} = bf16\[", hlo), name


def test_add_bias_gradient_sums_leading_axes():
  # Dense biases ([N] over [B, S, N]) and position embeddings ([S, H] over [B, S, H]).
  for y_shape, b_shape in (((3, 5, 7), (7,)), ((3, 5, 7), (5, 7)), ((4, 6), (6,))):
    ky, kb, kg = jax.random.split(jax.random.PRNGKey(len(b_shape)), 3)
    y = jax.random.normal(ky, y_shape)
    b = jax.random.normal(kb, b_shape)
    g = jax.random.normal(kg, y_shape)
    out, vjp = jax.vjp(M.add_bias, y, b)
    dy, db = vjp(g)
    np.testing.assert_allclose(np.asarray(out), np.asarray(y + b), rtol=0, atol=0)
    np.testing.assert_allclose(np.asarray(dy), np.asarray(g), rtol=0, atol=0)
    lead = tuple(range(len(y_shape) - len(b_shape)))
    assert db.shape == b_shape
    np.testing.assert_allclose(np.asarray(db), np.asarray(g).sum(lead), rtol=1e-5, atol=1e-5)
