"""MLM-only packed rows (data.objective=mlm) and masking-rate control, on the bundled corpus.

Budget: ~15 s of CPU (numpy batches; one tiny encoder for the equality test)."""
import os
import pickle
import warnings

import jax
import numpy as np
import pytest

from bertjax.config import base_config, model_config
from bertjax.data import masking, packing, shards
from bertjax.data.pipeline import make_pretrain_iterator
from bertjax.data.prepare import load_manifest, prepare_corpus
from bertjax.errors import UserError
from bertjax.model import BertEncoder

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
S = 64


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  d = base_config().data
  d.corpus = os.path.join(REPO, "data", "corpus", "*.txt")
  d.tokenizer = os.path.join(REPO, "data", "tokenizer", "spm.model")
  d.heldout_fraction = 0.05
  out = str(tmp_path_factory.mktemp("packed"))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    prepare_corpus(d, out)
  return out


def packed(prepared_dir, n, **kw):
  args = dict(global_batch_size=32, max_seq_length=S, max_predictions_per_seq=20, seed=5,
              objective="mlm", masked_lm_prob=0.3)
  args.update(kw)
  it = make_pretrain_iterator(prepared_dir, "train", **args)
  return [next(it) for _ in range(n)], it


def unmasked(b):
  ids = b["input_ids"].copy()
  rows = np.arange(len(ids))[:, None]
  pos, w = b["masked_lm_positions"], b["masked_lm_weights"] > 0
  ids[rows, pos] = np.where(w, b["masked_lm_ids"], ids[rows, pos])
  return ids


def _stream(prepared_dir, seed, epoch):
  """The epoch's token stream rebuilt independently: documents in the plan's order, each
  followed by [SEP]."""
  man = load_manifest(prepared_dir)
  info = man["splits"]["train"]
  _, pieces = shards.load_index(prepared_dir, "train")
  store = shards.DocStore(prepared_dir, info, man["token_dtype"])
  docs = pieces[:, 0]
  first = np.flatnonzero(np.r_[True, docs[1:] != docs[:-1]])
  order = np.random.default_rng([seed, epoch, packing._S_DOCS]).permutation(len(first))
  toks = {p: t for p, (_, t) in zip(range(len(docs)), store.read(np.arange(len(docs))))}
  bounds = np.append(first, len(docs))
  out = []
  for d in order:
    for p in range(bounds[d], bounds[d + 1]):
      out.append(np.asarray(toks[p], np.int64))
    out.append(np.array([man["special_ids"]["sep"]]))
  return np.concatenate(out), man["special_ids"]


def test_rows_are_full_windows_of_the_document_stream(prepared):
  (b0, b1), it = packed(prepared, 2)
  stream, sp = _stream(prepared, seed=5, epoch=0)
  plan = it.fn.plan(0)
  ids = unmasked(b0)
  assert (b0["input_mask"] > 0).all()          # no padding at all
  assert (ids[:, 0] == sp["cls"]).all()
  for r in range(32):
    w = int(plan.rows[r]) * (S - 1)
    np.testing.assert_array_equal(ids[r, 1:], stream[w:w + S - 1])
  # document ids: a new one right after each [SEP] that ends a document, positions restart
  multi = np.flatnonzero(np.concatenate([b0["input_mask"], b1["input_mask"]]).max(1) > 1)
  assert len(multi) > 0
  for b in (b0, b1):
    for r in range(32):
      m, pos, row = b["input_mask"][r], b["position_ids"][r], unmasked(b)[r]
      change = np.flatnonzero(m[1:] != m[:-1]) + 1
      for c in change:
        assert row[c - 1] == sp["sep"] and m[c] == m[c - 1] + 1 and pos[c] == 0
      assert pos[0] == 0 and (np.diff(pos)[m[1:] == m[:-1]] == 1).all()
  assert plan.unit_start[-1] == len(stream) and len(plan) == len(stream) // (S - 1)


def test_packed_row_equals_each_document_alone(prepared):
  bs, _ = packed(prepared, 4)
  batch = {k: np.concatenate([b[k] for b in bs]) for k in bs[0]}
  r = int(np.flatnonzero(batch["input_mask"].max(1) > 1)[0])
  cfg = model_config("tiny", vocab_size=8000, max_position_embeddings=S)
  cfg.hidden_dropout_prob = cfg.attention_probs_dropout_prob = 0.0
  cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = 2, 64, 128
  model = BertEncoder(cfg)
  ids, mask, pos = (batch[k][r:r + 1] for k in ("input_ids", "input_mask", "position_ids"))
  params = model.init(jax.random.PRNGKey(0), ids)["params"]
  packed_out = model.apply({"params": params}, ids, None, mask, position_ids=pos)[0][0]  # [S, H]
  for d in np.unique(mask[0]):
    cols = np.flatnonzero(mask[0] == d)
    alone = model.apply({"params": params}, ids[:, cols])[0][0]       # [n, H], positions 0..n-1
    np.testing.assert_allclose(packed_out[cols], alone, atol=2e-5, rtol=1e-5)
  # the same row with cross-document attention: the documents do see each other
  crossed, _ = packed(prepared, 4, cross_document_attention=True)
  crossed = {k: np.concatenate([b[k] for b in crossed]) for k in crossed[0]}
  np.testing.assert_array_equal(crossed["input_ids"][r], ids[0])
  assert (crossed["input_mask"][r] == 1).all()
  np.testing.assert_array_equal(crossed["position_ids"][r], np.arange(S))
  out = model.apply({"params": params}, ids, None, crossed["input_mask"][r:r + 1],
                    position_ids=crossed["position_ids"][r:r + 1])[0][0]
  cols = np.flatnonzero(mask[0] == mask[0].max())
  assert np.abs(out[cols] - packed_out[cols]).max() > 1e-3


def test_exact_resume_and_any_process_or_worker_count(prepared):
  ref, _ = packed(prepared, 5)
  _, it = packed(prepared, 2)
  state = it.get_state()
  _, fresh = packed(prepared, 0)
  fresh.set_state(state)
  for want in ref[2:]:
    got = next(fresh)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k])
  # three processes' rows concatenate to the single-process batch (global batch 33 = 3 x 11)
  one, _ = packed(prepared, 2, global_batch_size=33)
  parts = [packed(prepared, 2, global_batch_size=33, process_index=p, process_count=3)[0]
           for p in range(3)]
  for i in range(2):
    for k in one[i]:
      np.testing.assert_array_equal(np.concatenate([p[i][k] for p in parts]), one[i][k])
  # a grain worker gets a pickled copy of the batch builder: it builds the same batches
  fn = pickle.loads(pickle.dumps(it.fn))
  np.testing.assert_array_equal(fn(3)["input_ids"], ref[3]["input_ids"])
  # a resume under another objective is refused in one line
  nsp = make_pretrain_iterator(prepared, "train", global_batch_size=32, max_seq_length=S,
                               max_predictions_per_seq=20)
  with pytest.raises(UserError, match="data.objective=mlm"):
    nsp.set_state(state)


def test_randomness_is_keyed_on_seed_epoch_index(prepared):
  (b,), it = packed(prepared, 1)
  # row 5 of batch 0 = example (epoch 0, index 5), built alone
  alone = it.fn.build([(0, 5)], 0.3)
  for k in b:
    np.testing.assert_array_equal(alone[k][0], b[k][5])
  n = it.fn.epoch_size(0)
  later = it.fn.build([(1, 5), (0, 5)], 0.3)
  assert not np.array_equal(later["input_ids"][0], b["input_ids"][5])   # another epoch
  np.testing.assert_array_equal(later["input_ids"][1], b["input_ids"][5])
  (other,), _ = packed(prepared, 1, seed=6)
  assert not np.array_equal(other["input_ids"], b["input_ids"])
  assert n == it.fn.epoch_size(1)    # every epoch has the same number of full windows


def test_any_masking_rate_and_configurable_replacements(prepared):
  p = masking.derived_max_predictions(0.3, S)
  assert p == 20 and masking.derived_max_predictions(0.15, 128) == 20
  (b,), it = packed(prepared, 1, max_predictions_per_seq=p)
  tables = dict(np.load(os.path.join(prepared, "token_tables.npz")))
  maskable = ~tables["special"][unmasked(b)]
  np.testing.assert_array_equal(b["masked_lm_weights"].sum(1),
                                np.minimum(p, np.rint(0.3 * maskable.sum(1))))
  mask_id = load_manifest(prepared)["special_ids"]["mask"]
  (all_mask,), _ = packed(prepared, 1, mask_token_prob=1.0, random_token_prob=0.0)
  (kept,), _ = packed(prepared, 1, mask_token_prob=0.0, random_token_prob=0.0)
  rows = np.arange(32)[:, None]
  w = all_mask["masked_lm_weights"] > 0
  assert (all_mask["input_ids"][rows, all_mask["masked_lm_positions"]][w] == mask_id).all()
  np.testing.assert_array_equal(kept["input_ids"], unmasked(kept))
  # the default 80/10/10 on many positions
  bs, _ = packed(prepared, 8)
  hit = np.concatenate([(x["input_ids"][rows, x["masked_lm_positions"]])[x["masked_lm_weights"] > 0]
                        for x in bs])
  lab = np.concatenate([x["masked_lm_ids"][x["masked_lm_weights"] > 0] for x in bs])
  assert abs(np.mean(hit == mask_id) - 0.8) < 0.03
  assert abs(np.mean(hit == lab) - 0.1) < 0.02
  with pytest.raises(UserError, match="mask_token_prob"):
    packed(prepared, 1, mask_token_prob=0.95, random_token_prob=0.1)


def test_mask_rate_schedule_values(prepared):
  vals = [masking.rate_at(s, start=0.3, end=0.05, num_steps=11) for s in range(11)]
  np.testing.assert_allclose(vals, np.linspace(0.3, 0.05, 11))
  assert masking.rate_at(7, start=0.3, end=0.0, num_steps=11) == 0.3     # end 0: constant
  assert masking.rate_at(50, start=0.3, end=0.05, num_steps=11) == 0.05   # clamped after
  # the pipeline masks batch i at the rate of step step_offset + i
  bs, _ = packed(prepared, 3, masked_lm_prob_end=0.1, schedule_steps=5, step_offset=2,
                 max_predictions_per_seq=40)
  tables = dict(np.load(os.path.join(prepared, "token_tables.npz")))
  for i, b in enumerate(bs):
    rate = masking.rate_at(2 + i, start=0.3, end=0.1, num_steps=5)
    n_cand = (~tables["special"][unmasked(b)]).sum(1)
    np.testing.assert_array_equal(b["masked_lm_weights"].sum(1), np.rint(rate * n_cand))
