"""The BERT encoder (Devlin et al., 2019) in Flax: the same function as the reference BERT.

Shape legend:
  B = batch, S = sequence length, H = hidden size, N = attention heads, D = H / N (head size),
  I = intermediate (FFN) size, V = vocabulary size, T = segment (token-type) vocabulary, P = masked
  positions per sequence (max_predictions_per_seq).

Parameters are kept in float32; `config.dtype` sets the compute dtype. Every matmul accumulates
in float32 (`preferred_element_type`), which is also what makes bf16 fast on AMX / tensor cores.
Softmax and LayerNorm run in float32.

Parameter tree (the names `bertjax.interop` maps to and from Hugging Face's BertModel):
  embeddings/{word_embeddings, position_embeddings, token_type_embeddings} ([V|max_pos|T, H]),
  embeddings/LayerNorm/{scale, bias}
  layer_{i}/attention/{query, key, value}/{kernel, bias}
  layer_{i}/{attention_output, intermediate, output}/{kernel, bias}
  layer_{i}/{attention_norm, output_norm}/{scale, bias}
  pooler/{kernel, bias}
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

def dtype_of(config) -> Any:
  return jnp.bfloat16 if config.dtype == "bfloat16" else jnp.float32


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
    y = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype),
                            (((x.ndim - 1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)  # [..., features] f32
    return (y + bias).astype(dtype)


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


def gelu(x: Array) -> Array:
  """Exact GELU, x * Phi(x), as the original BERT (not the tanh approximation)."""
  return jax.nn.gelu(x, approximate=False)


class Embeddings(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array, deterministic: bool) -> Array:
    c = self.config
    init = weight_init(c)
    word = self.param("word_embeddings", init, (c.vocab_size, c.hidden_size))         # [V, H]
    pos = self.param("position_embeddings", init, (c.max_position_embeddings, c.hidden_size))
    seg = self.param("token_type_embeddings", init, (c.type_vocab_size, c.hidden_size))
    s = input_ids.shape[1]
    x = (jnp.take(word, input_ids, axis=0)             # [B, S, H]
         + pos[None, :s]                               # [1, S, H]
         + jnp.take(seg, segment_ids, axis=0))         # [B, S, H]
    x = LayerNorm(c, name="LayerNorm")(x)
    return nn.Dropout(c.hidden_dropout_prob)(x, deterministic=deterministic)


class SelfAttention(nn.Module):
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    c = self.config
    dtype = dtype_of(c)
    b, s, h = x.shape
    n = c.num_attention_heads
    d = h // n
    q_proj, k_proj, v_proj = (Dense(h, c, name=name) for name in ("query", "key", "value"))
    if c.fused_qkv:
      # One [H, 3H] matmul over the three kernels: same parameters, fewer, larger matmuls.
      for p in (q_proj, k_proj, v_proj):
        p(x[:, :1])  # materialise the params (cheap; its output is discarded)
      kernel = jnp.concatenate([p.variables["params"]["kernel"] for p in (q_proj, k_proj, v_proj)],
                               axis=1)                                        # [H, 3H]
      bias = jnp.concatenate([p.variables["params"]["bias"] for p in (q_proj, k_proj, v_proj)])
      qkv = jax.lax.dot_general(x.astype(dtype), kernel.astype(dtype), (((2,), (0,)), ((), ())),
                                preferred_element_type=jnp.float32) + bias   # [B, S, 3H]
      q, k, v = jnp.split(qkv.astype(dtype), 3, axis=-1)                      # 3 x [B, S, H]
    else:
      q, k, v = q_proj(x), k_proj(x), v_proj(x)                               # 3 x [B, S, H]
    q = q.reshape(b, s, n, d)                                                 # [B, S, N, D]
    k = k.reshape(b, s, n, d)
    v = v.reshape(b, s, n, d)

    if c.attention_impl == "cudnn" and deterministic:
      ctx = jax.nn.dot_product_attention(
          q, k, v, mask=mask[:, None, None, :].astype(bool), implementation="cudnn")  # [B, S, N, D]
    else:
      scores = jnp.einsum("bqnd,bknd->bnqk", q, k,
                          preferred_element_type=jnp.float32) / jnp.sqrt(d).astype(jnp.float32)
      # [B, N, S, S]; padded keys get a large negative score (0 probability after softmax).
      scores = jnp.where(mask[:, None, None, :] > 0, scores, jnp.finfo(jnp.float32).min)
      probs = jax.nn.softmax(scores, axis=-1).astype(dtype)                   # [B, N, S, S]
      probs = nn.Dropout(c.attention_probs_dropout_prob)(probs, deterministic=deterministic)
      ctx = jnp.einsum("bnqk,bknd->bqnd", probs, v,
                       preferred_element_type=jnp.float32).astype(dtype)      # [B, S, N, D]
    return ctx.reshape(b, s, h)                                               # [B, S, H]


class TransformerLayer(nn.Module):
  """Post-LN layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""
  config: Any

  @nn.compact
  def __call__(self, x: Array, mask: Array, deterministic: bool) -> Array:
    c = self.config
    drop = nn.Dropout(c.hidden_dropout_prob)
    a = SelfAttention(c, name="attention")(x, mask, deterministic)               # [B, S, H]
    a = Dense(c.hidden_size, c, name="attention_output")(a)
    x = LayerNorm(c, name="attention_norm")(x + drop(a, deterministic=deterministic))
    f = gelu(Dense(c.intermediate_size, c, name="intermediate")(x))   # [B, S, I]
    f = Dense(c.hidden_size, c, name="output")(f)                     # [B, S, H]
    return LayerNorm(c, name="output_norm")(x + drop(f, deterministic=deterministic))


class BertEncoder(nn.Module):
  """Embeddings + L post-LN layers + pooler. Returns (sequence [B, S, H], pooled [B, H])."""
  config: Any

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array | None = None,
               input_mask: Array | None = None, deterministic: bool = True,
               output_hidden_states: bool = False):
    c = self.config
    if segment_ids is None:
      segment_ids = jnp.zeros_like(input_ids)
    if input_mask is None:
      input_mask = jnp.ones_like(input_ids)
    x = Embeddings(c, name="embeddings")(input_ids, segment_ids, deterministic)  # [B, S, H]
    layer_cls = nn.remat(TransformerLayer, static_argnums=(3,)) if c.remat else TransformerLayer
    hidden = [x]
    for i in range(c.num_hidden_layers):
      x = layer_cls(c, name=f"layer_{i}")(x, input_mask, deterministic)
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
  Returns (mlm_logits [B, P, V] f32, nsp_logits [B, 2] f32).
  """
  config: Any

  @nn.compact
  def __call__(self, input_ids: Array, segment_ids: Array, input_mask: Array,
               masked_lm_positions: Array | None, deterministic: bool = True):
    c = self.config
    dtype = dtype_of(c)
    encoder = BertEncoder(c, name="bert")
    seq, pooled = encoder(input_ids, segment_ids, input_mask, deterministic)   # [B,S,H], [B,H]
    if masked_lm_positions is not None:
      seq = jnp.take_along_axis(seq, masked_lm_positions[..., None], axis=1)  # [B, P, H]
    t = gelu(Dense(c.hidden_size, c, name="mlm_transform")(seq))             # [B, P, H]
    t = LayerNorm(c, name="mlm_norm")(t)
    word = encoder.variables["params"]["embeddings"]["word_embeddings"]      # [V, H] (tied)
    mlm_bias = self.param("mlm_output_bias", nn.initializers.zeros, (c.vocab_size,))
    mlm_logits = jnp.einsum("bph,vh->bpv", t.astype(dtype), word.astype(dtype),
                            preferred_element_type=jnp.float32) + mlm_bias    # [B, P, V]
    nsp_logits = Dense(2, c, name="nsp")(pooled).astype(jnp.float32)         # [B, 2]
    return mlm_logits, nsp_logits
