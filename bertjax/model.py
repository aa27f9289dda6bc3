"""The BERT encoder (Devlin et al., 2019) in Flax: the same function as the reference BERT.

Shape legend:
  B = batch, S = sequence length, H = hidden size, N = attention heads, D = H / N (head size),
  I = intermediate (FFN) size, V = vocabulary size, T = segment (token-type) vocabulary, P = masked
  positions per sequence (max_predictions_per_seq).

Parameters are kept in float32; `config.dtype` sets the compute dtype. Every matmul accumulates
in float32 (`preferred_element_type`), which is also what makes bf16 fast on AMX / tensor cores.
Softmax and LayerNorm run in float32.

Parameter tree (the names `bertjax.weights.interop` maps to and from Hugging Face's BertModel):
  embeddings/{word_embeddings, position_embeddings, token_type_embeddings} ([V|max_pos|T, H]),
  embeddings/LayerNorm/{scale, bias}
  layer_{i}/attention/{query, key, value}/{kernel, bias}
  layer_{i}/{attention_output, intermediate, output}/{kernel, bias}
  layer_{i}/{attention_norm, output_norm}/{scale, bias}
  pooler/{kernel, bias}

Just over 400 lines, one file on purpose: the embeddings, the attention paths (einsum, fused,
packed rows) and the pretraining heads are read together against the paper and the parity
tests with transformers; the fine-tuning heads live in heads.py.
"""
from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from bertjax.config import resolve_dtype

Array = jax.Array


def dtype_of(config) -> Any:
  # "auto": bf16 where this backend runs it faster than f32 (bertjax.config.fast_bf16).
  return jnp.bfloat16 if resolve_dtype(config.dtype) == "bfloat16" else jnp.float32


def _einsum_pair(out: str, x: str, xv: Array, y: str, yv: Array) -> Array:
  """einsum(f"{x},{y}->{out}") in f32, operands ordered so the first one owns the output's
  leading free index: the order XLA:CPU lowers to its fast bf16 x bf16 -> f32 kernels (the other
  order can fall back to a kernel without bf16 support)."""
  first_free = next(ch for ch in out if (ch in x) != (ch in y))
  if first_free not in x:
    x, xv, y, yv = y, yv, x, xv
  if len(out) == 2 and len(x) > 2 and xv.size > yv.size:
    # A weight gradient (x^T g, contracting the leading [B, S] axes): the dot copies its first
    # operand into a transposed layout, so let that be the smaller one and transpose the small
    # [out1, out0] result instead (FFN output kernel: [B*S, H] copied instead of [B*S, I]).
    return jax.lax.optimization_barrier(
        jnp.einsum(f"{y},{x}->{out[::-1]}", yv, xv, preferred_element_type=jnp.float32)).T
  return jnp.einsum(f"{x},{y}->{out}", xv, yv, preferred_element_type=jnp.float32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 3))
def mixed_einsum(spec: str, a: Array, b: Array, dtype: Any) -> Array:
  """einsum(spec, a, b) with operands cast to `dtype` and the product accumulated in float32.

  For bfloat16 the backward pass is bf16 x bf16 -> f32 too: autodiff alone would feed the f32
  cotangent into the transposed matmuls (f32 x f32), which on CPU (AMX) and accelerators runs
  several times slower than bf16 inputs. Gradients come back in each operand's own dtype (f32
  for the f32 master kernels), so only the cotangent is rounded to bf16, as in bf16 training.
  spec: explicit 'x,y->out' without '...'; every index of a and b must appear in the other
  operand or in the output (true for matmuls).
  """
  return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)


def _mixed_einsum_fwd(spec, a, b, dtype):
  ac, bc = a.astype(dtype), b.astype(dtype)
  # Residuals in the compute dtype (half the memory of f32 for bf16), plus the operand dtypes.
  return (jnp.einsum(spec, ac, bc, preferred_element_type=jnp.float32),
          (ac, bc, jnp.zeros((), a.dtype), jnp.zeros((), b.dtype)))


def _mixed_einsum_bwd(spec, dtype, res, g):
  ac, bc, a_like, b_like = res
  ins, out = spec.split("->")
  sa, sb = ins.split(",")
  g = g.astype(dtype)
  da = _einsum_pair(sa, out, g, sb, bc)  # d/da: contract g with b
  db = _einsum_pair(sb, out, g, sa, ac)  # d/db: contract g with a
  # A barrier on weight gradients: XLA would otherwise fold a following transpose (of word.T)
  # into the dot, making it one that XLA:CPU's bf16 kernels reject.
  da, db = (jax.lax.optimization_barrier(x) if x.ndim == 2 else x for x in (da, db))
  return da.astype(a_like.dtype), db.astype(b_like.dtype)


mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def matmul(spec: str, a: Array, b: Array, config) -> Array:
  """The one matmul of the model: f32 accumulation; bf16 compute also in the backward pass."""
  dtype = dtype_of(config)
  if dtype == jnp.float32:
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return mixed_einsum(spec, a, b, dtype)


def add_bias(y: Array, bias: Array) -> Array:
  """y + bias (bias broadcast over y's leading axes), whose bias gradient -- a sum over those
  axes -- is a matrix-vector product ones @ g: XLA:CPU's reduction of a [B*P, V] array over its
  rows was ~20x slower, and [B*S, H] column sums (every Dense bias, the position embeddings)
  run as slow library reductions."""
  return _add_trailing(bias.ndim, y, bias)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _add_trailing(ndim: int, y: Array, bias: Array) -> Array:
  return y + bias


def _add_trailing_fwd(ndim, y, bias):
  return y + bias, None


def _add_trailing_bwd(ndim, _, g):
  tail = g.shape[g.ndim - ndim:]
  rows = g.reshape(-1, math.prod(tail))                                    # [M, bias size]
  return g, jnp.dot(jnp.ones((rows.shape[0],), rows.dtype), rows).reshape(tail)


_add_trailing.defvjp(_add_trailing_fwd, _add_trailing_bwd)


# Dense biases and position embeddings (the benchmark's ablation swaps in a plain `+`).
bias_add = add_bias


def _fmix32(x: Array) -> Array:
  """MurmurHash3's 32-bit finalizer: a bijective avalanche mix of uint32 words."""
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def dropout_bits(key: Array, shape: tuple[int, ...]) -> Array:
  """uint32 random words for dropout masks: two rounds of a counter hash under a 64-bit key.

  Dropout needs i.i.d. fair bits, not a cryptographic stream. Threefry (jax.random) spends ~80
  integer ops per word, which on CPU made dropout ~25% of a BERT-mini training step; this hash
  spends ~12 (10x faster, measured). The key still comes from the step's dropout key, so masks
  stay a pure function of (seed, step, layer). Falls back to jax.random above 2^32 elements.
  """
  n = math.prod(shape)
  if n >= 2**32:
    return jax.random.bits(key, shape, jnp.uint32)
  seed = jax.random.bits(key, (2,), jnp.uint32)
  counter = jax.lax.iota(jnp.uint32, n).reshape(shape)
  return _fmix32(_fmix32(counter ^ seed[0]) ^ seed[1])


class Dropout(nn.Module):
  """Inverted dropout (as flax.linen.Dropout) with masks from `dropout_bits`."""
  rate: float

  @nn.compact
  def __call__(self, x: Array, deterministic: bool) -> Array:
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    # P(drop) = threshold / 2^32 = rate to within 2^-32.
    threshold = jnp.uint32(min(round(self.rate * 2**32), 2**32 - 1))
    keep = dropout_bits(self.make_rng("dropout"), x.shape) >= threshold
    return jax.lax.select(keep, x / jnp.asarray(keep_prob, x.dtype), jnp.zeros_like(x))


def weight_init(config):
  # BERT draws weights from a normal truncated at 2 stddev.
  return nn.initializers.truncated_normal(stddev=config.initializer_range)


class Dense(nn.Module):
  """x @ kernel + bias in the compute dtype, accumulated in float32, kernel stored in float32."""
  features: int
  config: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    dtype = dtype_of(self.config)
    kernel = self.param("kernel", weight_init(self.config), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    # bf16: x keeps its own shape ([B, S, H], not [B*S, H]): the kernel gradient then contracts
    # two axes, which XLA:CPU lowers to its bf16 kernel (one contracted axis made it fall back to
    # f32). f32: one [B*S, H] x [H, N] product, whose backward XLA:CPU runs with fewer layout
    # copies: a MiniLM fine-tuning step 1.29x the tokens/s of the 3-D einsum on an AVX2 core,
    # the same dev accuracy (docs/performance.md).
    if dtype == jnp.float32:
      y = jnp.dot(x.reshape(-1, x.shape[-1]), kernel, preferred_element_type=jnp.float32
                  ).reshape(x.shape[:-1] + (self.features,))
    else:
      lead = "abcdefgh"[:x.ndim - 1]
      y = matmul(f"{lead}k,kn->{lead}n", x, kernel, self.config)   # [..., features] f32
    return bias_add(y, bias).astype(dtype)


class LayerNorm(nn.Module):
  """LayerNorm computed in float32 (eps from the config, 1e-12 in BERT)."""
  config: Any

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (h,))
    bias = self.param("bias", nn.initializers.zeros, (h,))
    x = x.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.config.layer_norm_eps) * scale + bias
    return y.astype(dtype_of(self.config))


@jax.custom_vjp
def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), as the original BERT (not the tanh approximation), computed in f32
  and returned in x's dtype.

  The backward is the closed form g * (Phi(x) + x * phi(x)) in one elementwise pass over the
  saved input; autodiff of x * erfc(-x / sqrt 2) / 2 kept f32 intermediates of the [B, S, I]
  activations and spent several passes on them (the FFN's largest elementwise cost on CPU).
  """
  xf = x.astype(jnp.float32)
  return (xf * _normal_cdf(xf)).astype(x.dtype)


def _normal_cdf(x: Array) -> Array:
  # 1 + erf rather than erfc(-x): XLA:CPU's erf is a short polynomial (5% faster BERT-mini
  # step than erfc, same absolute error ~1.5e-6 against float64).
  return 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _gelu_fwd(x):
  return gelu(x), x


def _gelu_bwd(x, g):
  xf = x.astype(jnp.float32)
  pdf = jnp.exp(-0.5 * xf * xf) * (1.0 / math.sqrt(2.0 * math.pi))          # phi(x)
  return ((g.astype(jnp.float32) * (_normal_cdf(xf) + xf * pdf)).astype(x.dtype),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


class Embeddings(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array, deterministic: bool,
               position_ids: Array | None = None, input_mask: Array | None = None) -> Array:
    c = self.config
    init = weight_init(c)
    word = self.param("word_embeddings", init, (c.vocab_size, c.hidden_size))         # [V, H]
    pos = self.param("position_embeddings", init, (c.max_position_embeddings, c.hidden_size))
    seg = self.param("token_type_embeddings", init, (c.type_vocab_size, c.hidden_size))
    s = input_ids.shape[1]
    w = jnp.take(word, input_ids, axis=0)                                       # [B, S, H]
    if input_mask is not None:
      # The [PAD] vector is not trained, as transformers' nn.Embedding(padding_idx=pad): no
      # gradient from padding positions. Only a loss that scores them (the span softmax over
      # padded rows, as BERT's run_squad) sends any; TF BERT then trained the [PAD] row.
      w = jnp.where((input_mask > 0)[..., None], w, jax.lax.stop_gradient(w))
    x = w + jnp.take(seg, segment_ids, axis=0)                                  # [B, S, H]
    if position_ids is None:
      x = bias_add(x, pos[:s])                         # [S, H], broadcast over B
    else:
      # Packed rows: positions restart at 0 for each example ([B, S] ids into the table).
      x = x + jnp.take(pos, position_ids, axis=0)      # [B, S, H]
    x = LayerNorm(c, name="LayerNorm")(x)
    return Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


def attention_mask(input_mask: Array) -> Array:
  """[B, S] int -> [B, S, S] bool: may query q attend to key k.

  input_mask: 0 = padding; any other value names the example (document) a token belongs to, so a
  0/1 mask is BERT's padding mask and a packed row carries 1, 2, 3 ... per example. A real token
  attends to the keys of its own example only (block-diagonal attention). A padding query
  attends to every real key, as in BERT and transformers, so a 0/1 mask gives exactly BERT's
  outputs at every position, padding included.
  """
  q = input_mask[:, :, None]                                                  # [B, S, 1]
  k = input_mask[:, None, :]                                                  # [B, 1, S]
  return (k > 0) & ((q == k) | (q == 0))                                      # [B, S, S]


def use_fused_attention(config, deterministic: bool) -> bool:
  """jax.nn.dot_product_attention (no dropout) or the explicit einsum path with dropout.

  attention_impl: auto = the fused call whenever attention dropout is inactive (evaluation, or
  attention_probs_dropout_prob = 0 as in cramming-style pretraining); einsum (also the older
  name xla) = always the explicit path; cudnn = the fused call forced onto cuDNN (GPU only),
  used when attention dropout is inactive.
  """
  if config.attention_impl in ("einsum", "xla"):
    return False
  return deterministic or config.attention_probs_dropout_prob == 0.0


class SelfAttention(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool,
               xq: Array | None = None) -> Array:
    """x [B, S, H]; mask [B, Q, S] bool from `attention_mask` (True: query q may read key k);
    xq [B, Q, H]: the queries' inputs (None: x itself, Q = S). -> [B, Q, H]."""
    c = self.config
    dtype = dtype_of(c)
    b, s, h = x.shape
    n = c.num_attention_heads
    d = h // n
    q_proj, k_proj, v_proj = (Dense(h, c, name=name) for name in ("query", "key", "value"))
    if xq is not None:
      q, k, v = q_proj(xq), k_proj(x), v_proj(x)                    # [B, Q, H], 2 x [B, S, H]
    elif c.fused_qkv:
      # One [H, 3H] matmul over the three kernels: same parameters, fewer, larger matmuls.
      for p in (q_proj, k_proj, v_proj):
        p(x[:, :1])  # materialise the params (cheap; its output is discarded)
      kernel = jnp.concatenate([p.variables["params"]["kernel"] for p in (q_proj, k_proj, v_proj)],
                               axis=1)                                        # [H, 3H]
      bias = jnp.concatenate([p.variables["params"]["bias"] for p in (q_proj, k_proj, v_proj)])
      qkv = matmul("bsh,hk->bsk", x, kernel, c) + bias                       # [B, S, 3H]
      q, k, v = jnp.split(qkv.astype(dtype), 3, axis=-1)                      # 3 x [B, S, H]
    else:
      q, k, v = q_proj(x), k_proj(x), v_proj(x)                               # 3 x [B, S, H]
    nq = q.shape[1]                                                           # Q
    q = q.reshape(b, nq, n, d)                                                # [B, Q, N, D]
    k = k.reshape(b, s, n, d)
    v = v.reshape(b, s, n, d)

    # Not at init: the params are the same either way, and the cudnn path checks for the cuDNN
    # library while tracing, which a GPU target compiled on a machine without one lacks.
    if use_fused_attention(c, deterministic) and not self.is_initializing():
      # jax.nn.dot_product_attention: cuDNN's fused kernel on GPU when it supports the shapes
      # ("auto"), XLA's softmax(QK^T)V elsewhere. It has no dropout, hence only when attention
      # dropout is inactive.
      impl = "cudnn" if c.attention_impl == "cudnn" else None
      ctx = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=impl)
      ctx = ctx.astype(dtype)                                                 # [B, Q, N, D]
    else:
      scores = matmul("bqnd,bknd->bnqk", q, k, c) / jnp.sqrt(d).astype(jnp.float32)
      # [B, N, Q, S]; masked keys get a large negative score (0 probability after softmax).
      scores = jnp.where(mask[:, None], scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1).astype(dtype)                   # [B, N, Q, S]
      probs = Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
      ctx = matmul("bnqk,bknd->bqnd", probs, v, c).astype(dtype)             # [B, Q, N, D]
    return ctx.reshape(b, nq, h)                                              # [B, Q, H]


class TransformerLayer(nn.Module):
  """Post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x)).

  query_positions [B, Q] (None: every position): the layer's output only at these positions,
  -> [B, Q, H]. Every position still serves as a key and value, so the outputs equal the full
  layer's at those positions; what is saved is the rest of the layer (the query, attention
  output and FFN matmuls of the other positions)."""
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool,
               query_positions: Array | None = None) -> Array:
    c = self.config
    drop = Dropout(c.hidden_dropout_prob)
    xq = None
    if query_positions is not None:
      xq = jnp.take_along_axis(x, query_positions[..., None], axis=1)          # [B, Q, H]
      mask = jnp.take_along_axis(mask, query_positions[..., None], axis=1)     # [B, Q, S]
    a = SelfAttention(c, name="attention")(x, mask, deterministic, xq)         # [B, Q, H]
    a = Dense(c.hidden_size, c, name="attention_output")(a)
    x = LayerNorm(c, name="attention_norm")((x if xq is None else xq)
                                            + drop(a, deterministic=deterministic))
    f = gelu(Dense(c.intermediate_size, c, name="intermediate")(x))   # [B, Q, I]
    f = Dense(c.hidden_size, c, name="output")(f)                     # [B, Q, H]
    return LayerNorm(c, name="output_norm")(x + drop(f, deterministic=deterministic))


class BertEncoder(nn.Module):
  """Embeddings + L post-LN layers + pooler. Returns (sequence [B, S, H], pooled [B, H])."""
  config: Any

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array | None = None,
               input_mask: Array | None = None, deterministic: bool = True,
               output_hidden_states: bool = False, position_ids: Array | None = None,
               query_positions: Array | None = None):
    """input_mask [B, S]: 0 = padding, else the example each token belongs to (see
    `attention_mask`); position_ids [B, S] (None = 0..S-1 in every row; packed rows restart
    them per example). query_positions [B, Q]: the last layer only at these positions (a head
    that reads only [CLS] vectors: sequence [B, Q, H], see `TransformerLayer`); its first
    column must be 0, where the pooler reads."""
    c = self.config
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if input_mask is None:
      input_mask = jnp.ones_like(input_ids)
    x = Embeddings(c, name="embeddings")(input_ids, segment_ids, deterministic,
                                         position_ids, input_mask)           # [B, S, H]
    mask = attention_mask(input_mask)                                         # [B, S, S]
    layer_cls = nn.remat(TransformerLayer, static_argnums=(3,)) if c.remat else TransformerLayer
    hidden = [x]
    last = c.num_hidden_layers - 1
    for i in range(c.num_hidden_layers):
      x = layer_cls(c, name=f"layer_{i}")(x, mask, deterministic,
                                          query_positions if i == last else None)
      hidden.append(x)
    pooled = jnp.tanh(Dense(c.hidden_size, c, name="pooler")(x[:, 0]).astype(jnp.float32))  # [B, H]
    if output_hidden_states:
      return x, pooled, hidden  # hidden: L + 1 arrays [B, S, H] (embeddings first, as HF)
    return x, pooled


class BertForPreTraining(nn.Module):
  """Encoder + MLM head (tied to the word embeddings) + NSP head.

  MLM logits are computed only at `masked_lm_positions` [B, P] (as the original BERT with
  max_predictions_per_seq), never a full [B, S, V] tensor; pass None to score every position
  (inference / tests).
  Returns (mlm_logits [B, P, V] f32, nsp_logits [B, 2] f32). nsp=False (MLM-only pretraining)
  builds no NSP head: no "nsp" parameters, and nsp_logits is None.
  """
  config: Any
  nsp: bool = True

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array, input_mask: Array,
               masked_lm_positions: Array | None, deterministic: bool = True,
               position_ids: Array | None = None):
    c = self.config
    dtype = dtype_of(c)
    encoder = BertEncoder(c, name="bert")
    seq, pooled = encoder(input_ids, segment_ids, input_mask, deterministic,
                          position_ids=position_ids)                           # [B,S,H], [B,H]
    if masked_lm_positions is not None:
      seq = jnp.take_along_axis(seq, masked_lm_positions[..., None], axis=1)  # [B, P, H]
    t = gelu(Dense(c.hidden_size, c, name="mlm_transform")(seq))             # [B, P, H]
    t = LayerNorm(c, name="mlm_norm")(t)
    word = encoder.variables["params"]["embeddings"]["word_embeddings"]      # [V, H] (tied)
    mlm_bias = self.param("mlm_output_bias", nn.initializers.zeros, (c.vocab_size,))
    # word.T: the gradient of the [V, H] table is then computed as [H, V] (x^T g, a small
    # transpose) rather than g^T x (transposing the [B*P, V] cotangent): 4x faster on CPU.
    mlm_logits = add_bias(matmul("bph,hv->bpv", t, word.T, c), mlm_bias)     # [B, P, V]
    if not self.nsp:
      return mlm_logits, None
    nsp_logits = Dense(2, c, name="nsp")(pooled).astype(jnp.float32)         # [B, 2]
    return mlm_logits, nsp_logits
