"""The BERT model: shapes, padding, bf16, fused QKV, masked-position MLM, parameter counts."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bertjax.config import model_config
from bertjax.model import BertEncoder, BertForPreTraining

B, S, P = 3, 16, 4


def small_cfg(**kw):
  c = model_config("tiny", vocab_size=97, max_position_embeddings=32)
  for k, v in kw.items():
    c[k] = v
  return c


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(0)
  ids = rng.integers(5, 97, size=(B, S)).astype(np.int32)
  lengths = np.array([S, 11, 6])
  mask = (np.arange(S)[None] < lengths[:, None]).astype(np.int32)        # [B, S]
  seg = ((np.arange(S)[None] >= lengths[:, None] // 2) & (mask > 0)).astype(np.int32)
  ids = np.where(mask > 0, ids, 0)
  pos = np.stack([rng.choice(int(n), P, replace=False) for n in lengths]).astype(np.int32)
  return dict(ids=jnp.asarray(ids), seg=jnp.asarray(seg), mask=jnp.asarray(mask),
              pos=jnp.asarray(pos), lengths=lengths)


@pytest.fixture(scope="module")
def params(batch):
  model = BertForPreTraining(small_cfg())
  return model.init(jax.random.PRNGKey(0), batch["ids"], batch["seg"], batch["mask"],
                    batch["pos"])["params"]


def run_pretraining(cfg, params, batch, positions):
  return BertForPreTraining(cfg).apply({"params": params}, batch["ids"], batch["seg"],
                                       batch["mask"], positions)


def test_shapes(params, batch):
  cfg = small_cfg()
  mlm, nsp = run_pretraining(cfg, params, batch, batch["pos"])
  assert mlm.shape == (B, P, cfg.vocab_size) and mlm.dtype == jnp.float32
  assert nsp.shape == (B, 2) and nsp.dtype == jnp.float32
  seq, pooled, hidden = BertEncoder(cfg).apply(
      {"params": params["bert"]}, batch["ids"], batch["seg"], batch["mask"],
      output_hidden_states=True)
  assert seq.shape == (B, S, cfg.hidden_size) and pooled.shape == (B, cfg.hidden_size)
  assert len(hidden) == cfg.num_hidden_layers + 1
  np.testing.assert_array_equal(hidden[-1], seq)
  # The MLM decoder is tied: there is no separate [H, V] kernel.
  assert params["mlm_output_bias"].shape == (cfg.vocab_size,)
  assert "decoder" not in params


def test_padding_does_not_leak(params, batch):
  """What sits in padded positions must not change the outputs at real positions."""
  cfg = small_cfg()
  enc = BertEncoder(cfg)
  seq, pooled = enc.apply({"params": params["bert"]}, batch["ids"], batch["seg"], batch["mask"])
  noisy = jnp.where(batch["mask"] > 0, batch["ids"], 42)
  seq2, pooled2 = enc.apply({"params": params["bert"]}, noisy, batch["seg"], batch["mask"])
  real = np.asarray(batch["mask"]) > 0
  np.testing.assert_allclose(np.asarray(seq)[real], np.asarray(seq2)[real], atol=1e-6)
  np.testing.assert_allclose(pooled, pooled2, atol=1e-6)
  # ...while without the mask the padding does change them (the test can fail).
  seq3, _ = enc.apply({"params": params["bert"]}, noisy, batch["seg"], None)
  assert np.abs(np.asarray(seq3)[real] - np.asarray(seq)[real]).max() > 1e-3


def test_pad_vector_gets_no_gradient_from_padding_positions(params, batch):
  """As transformers' nn.Embedding(padding_idx=0): a loss that scores padding positions (the
  span softmax over padded rows) trains the position and segment tables there, never the [PAD]
  word vector; a word vector at a real position still gets its gradient."""
  enc = BertEncoder(small_cfg())

  def loss(p, mask):
    seq, _ = enc.apply({"params": p}, batch["ids"], batch["seg"], mask)
    return jnp.sum(seq * jnp.arange(seq.shape[-1]))          # reads every position, padding too
  g = jax.grad(loss)(params["bert"], batch["mask"])["embeddings"]
  assert np.abs(np.asarray(g["word_embeddings"][0])).max() == 0.0       # [PAD] = 0
  assert np.abs(np.asarray(g["word_embeddings"][int(batch["ids"][0, 1])])).max() > 0
  assert np.abs(np.asarray(g["position_embeddings"][S - 1])).max() > 0  # padding in rows 1, 2
  # ...while with every position marked real the [PAD] vector is trained (the test can fail).
  g_all = jax.grad(loss)(params["bert"], jnp.ones_like(batch["mask"]))["embeddings"]
  assert np.abs(np.asarray(g_all["word_embeddings"][0])).max() > 0


def test_masked_positions_equal_full_logits_gathered(params, batch):
  cfg = small_cfg()
  masked, nsp = run_pretraining(cfg, params, batch, batch["pos"])     # [B, P, V]
  full, nsp_full = run_pretraining(cfg, params, batch, None)          # [B, S, V]
  gathered = jnp.take_along_axis(full, batch["pos"][..., None], axis=1)
  np.testing.assert_allclose(masked, gathered, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(nsp, nsp_full, rtol=1e-6, atol=1e-6)


def test_fused_qkv_is_the_same_function(params, batch):
  a = run_pretraining(small_cfg(), params, batch, batch["pos"])
  b = run_pretraining(small_cfg(fused_qkv=True), params, batch, batch["pos"])
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)


def test_remat_is_the_same_function(params, batch):
  a = run_pretraining(small_cfg(), params, batch, batch["pos"])
  b = run_pretraining(small_cfg(remat=True), params, batch, batch["pos"])
  for x, y in zip(a, b):
    np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_bf16_close_to_f32(params, batch):
  enc32 = BertEncoder(small_cfg())
  enc16 = BertEncoder(small_cfg(dtype="bfloat16"))
  s32, p32 = enc32.apply({"params": params["bert"]}, batch["ids"], batch["seg"], batch["mask"])
  s16, p16 = enc16.apply({"params": params["bert"]}, batch["ids"], batch["seg"], batch["mask"])
  assert s16.dtype == jnp.bfloat16 and s32.dtype == jnp.float32
  real = np.asarray(batch["mask"]) > 0
  err = np.abs(np.asarray(s16, np.float32) - np.asarray(s32))[real]
  # LayerNorm outputs are O(1); bf16 has ~3 significant digits.
  assert err.max() < 0.1 and err.mean() < 0.02, (err.max(), err.mean())
  assert err.max() > 0  # really computed in bf16
  np.testing.assert_allclose(np.asarray(p16, np.float32), p32, atol=0.05)
  mlm16, nsp16 = run_pretraining(small_cfg(dtype="bfloat16"), params, batch, batch["pos"])
  mlm32, nsp32 = run_pretraining(small_cfg(), params, batch, batch["pos"])
  assert mlm16.dtype == jnp.float32  # logits always f32 (stable softmax)
  np.testing.assert_allclose(mlm16, mlm32, atol=0.1)


def test_dropout_only_in_training(params, batch):
  cfg = small_cfg()
  enc = BertEncoder(cfg)
  args = ({"params": params["bert"]}, batch["ids"], batch["seg"], batch["mask"])
  a, _ = enc.apply(*args, deterministic=True)
  b, _ = enc.apply(*args, deterministic=True)
  c, _ = enc.apply(*args, deterministic=False, rngs={"dropout": jax.random.PRNGKey(1)})
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-3


def count_params(module, *args):
  tree = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *args))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("size, exact, published", [
    # Exact BertModel counts (embeddings + encoder + pooler) of bert-base/large-uncased as
    # transformers reports them; the papers round them to 110M / 340M.
    ("base", 109_482_240, 110e6),
    ("large", 335_141_888, 340e6),
])
def test_parameter_counts(size, exact, published):
  cfg = model_config(size, vocab_size=30522, max_position_embeddings=512)
  ids = jnp.zeros((1, 2), jnp.int32)
  n = count_params(BertEncoder(cfg), ids)
  assert n == exact
  assert abs(n - published) / published < 0.015
  # The pretraining heads add the MLM transform + LayerNorm + output bias and the NSP layer.
  h, v = cfg.hidden_size, cfg.vocab_size
  heads = (h * h + h) + 2 * h + v + (2 * h + 2)
  assert count_params(BertForPreTraining(cfg), ids, ids, ids, None) == exact + heads


@pytest.mark.parametrize("kw", [{"attention_impl": "einsum"}, {"attention_impl": "auto"},
                                {"remat": True, "fused_qkv": True}])
def test_last_layer_at_query_positions_equals_full_layer_gathered(params, batch, kw):
  """query_positions: the last layer only at [B, Q] positions gives the full encoder's outputs
  there, the same pooled vector, and the same gradients of anything read from them."""
  cfg = small_cfg(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **kw)
  enc = BertEncoder(cfg)
  q = jnp.asarray([[0, 3, 9], [0, 1, 10], [0, 5, 5]], jnp.int32)              # [B, Q]
  weights = jnp.asarray(np.random.default_rng(2).normal(size=(B, 3, 128)), jnp.float32)

  def read(p, positions):
    seq, pooled = enc.apply({"params": p}, batch["ids"], batch["seg"], batch["mask"], False,
                            query_positions=positions)
    if positions is None:
      seq = jnp.take_along_axis(seq, q[..., None], axis=1)                    # [B, Q, H]
    return (seq * weights).sum() + pooled.sum(), (seq, pooled)

  (_, (seq_q, pooled_q)), g_q = jax.value_and_grad(read, has_aux=True)(params["bert"], q)
  (_, (seq_f, pooled_f)), g_f = jax.value_and_grad(read, has_aux=True)(params["bert"], None)
  assert seq_q.shape == (B, 3, 128)
  np.testing.assert_allclose(seq_q, seq_f, atol=2e-5, rtol=0)
  np.testing.assert_allclose(pooled_q, pooled_f, atol=2e-5, rtol=0)
  for a, b in zip(jax.tree_util.tree_leaves(g_q), jax.tree_util.tree_leaves(g_f)):
    np.testing.assert_allclose(a, b, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["einsum", "auto"])
def test_packed_row_equals_each_example_alone(params, impl):
  """Two examples packed into one row (mask 1.. / 2.., positions restarting per example) give
  each example's outputs run alone: attention never crosses the example boundary."""
  cfg = small_cfg(attention_impl=impl)
  enc = BertEncoder(cfg)
  rng = np.random.default_rng(1)
  a, b = rng.integers(5, 97, size=5), rng.integers(5, 97, size=7)
  packed = np.zeros((1, S), np.int32)
  packed[0, :5], packed[0, 5:12] = a, b
  mask = np.array([[1] * 5 + [2] * 7 + [0] * (S - 12)], np.int32)           # [1, S]
  positions = np.array([list(range(5)) + list(range(7)) + list(range(S - 12))], np.int32)
  seg = np.zeros_like(packed)
  seq_p, _ = enc.apply({"params": params["bert"]}, packed, seg, mask, position_ids=positions)
  for ids, start in ((a, 0), (b, 5)):
    alone = np.zeros((1, S), np.int32)
    alone[0, :len(ids)] = ids
    m = (np.arange(S) < len(ids)).astype(np.int32)[None]
    seq_a, _ = enc.apply({"params": params["bert"]}, alone, seg, m)
    np.testing.assert_allclose(seq_p[0, start:start + len(ids)], seq_a[0, :len(ids)],
                               atol=2e-5, rtol=0)


@pytest.mark.parametrize("dtype,atol", [("float32", 2e-5), ("bfloat16", 3e-2)])
def test_fused_attention_equals_einsum_path(params, batch, dtype, atol):
  """jax.nn.dot_product_attention (attention_impl=auto, attention dropout off) computes what
  the explicit einsum path computes, outputs and gradients, padding included."""
  outs = {}
  for impl in ("einsum", "auto"):
    cfg = small_cfg(attention_impl=impl, dtype=dtype, attention_probs_dropout_prob=0.0,
                    hidden_dropout_prob=0.0)

    def loss(p, cfg=cfg):
      mlm, nsp = run_pretraining(cfg, p, batch, batch["pos"])
      return jnp.sum(mlm ** 2) * 1e-3 + jnp.sum(nsp)

    outs[impl] = (run_pretraining(cfg, params, batch, batch["pos"]),
                  jax.grad(loss)(params))
  (mlm_e, nsp_e), g_e = outs["einsum"]
  (mlm_a, nsp_a), g_a = outs["auto"]
  np.testing.assert_allclose(mlm_a, mlm_e, atol=atol, rtol=0)
  np.testing.assert_allclose(nsp_a, nsp_e, atol=atol, rtol=0)
  for x, y in zip(jax.tree.leaves(g_a), jax.tree.leaves(g_e)):
    np.testing.assert_allclose(x, y, atol=atol * 10, rtol=atol * 10)


def test_auto_attention_uses_fused_call_only_without_attention_dropout():
  from bertjax.model import use_fused_attention
  assert use_fused_attention(small_cfg(attention_impl="auto"), deterministic=True)
  assert not use_fused_attention(small_cfg(attention_impl="auto"), deterministic=False)
  assert use_fused_attention(small_cfg(attention_impl="auto", attention_probs_dropout_prob=0.0),
                             deterministic=False)
  assert not use_fused_attention(small_cfg(attention_impl="einsum"), deterministic=True)


def test_cudnn_attention_model_initialises_without_cudnn():
  # Init never takes the fused path, so a cudnn config gets its params (and compiles for a GPU
  # target, bertjax compile) on a machine without the cuDNN library.
  model = BertForPreTraining(small_cfg(attention_impl="cudnn"))
  ids = jnp.zeros((2, 8), jnp.int32)
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), ids, ids, ids + 1,
                                             jnp.zeros((2, 2), jnp.int32),
                                             deterministic=True))["params"]
  ref = jax.eval_shape(lambda: BertForPreTraining(small_cfg()).init(
      jax.random.key(0), ids, ids, ids + 1, jnp.zeros((2, 2), jnp.int32),
      deterministic=True))["params"]
  assert jax.tree.map(lambda a: a.shape, params) == jax.tree.map(lambda a: a.shape, ref)
