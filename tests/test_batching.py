"""Fine-tuning batches sized to their content: buckets and packing give the padded predictions."""
import json

import jax
import numpy as np
import pytest

from bertjax.errors import UserError
from bertjax.tasks import batching, finetune

from test_tasks_finetune import WORDS, tiny_cfg


# --------------------------------------------------------------- layout pieces

def test_bucket_lengths_default_and_explicit():
  assert batching.bucket_lengths("", 128) == (32, 64, 128)
  assert batching.bucket_lengths("", 384) == (32, 64, 128, 256, 384)
  assert batching.bucket_lengths("", 16) == (16,)
  assert batching.bucket_lengths("48, 16", 64) == (16, 48, 64)      # max_seq_length always last
  for bad in ("a,b", "0,8", "16,200"):
    with pytest.raises(UserError, match="finetune.bucket_lengths"):
      batching.bucket_lengths(bad, 128)


def test_round_rows_few_shapes_little_waste():
  got = [batching.round_rows(r, 1) for r in range(1, 25)]
  assert sorted(set(got)) == [1, 2, 3, 4, 6, 8, 12, 16, 24]
  assert all(r <= g <= 1.5 * r for r, g in zip(range(1, 25), got))
  assert batching.round_rows(9, 8) == 16 and batching.round_rows(17, 8) == 24


def test_eval_batches_spread_rows_evenly():
  assert batching.Batcher("pack", 16).even_rows(173, 64) == 58        # 3 x 58, not 3 x 64
  assert batching.Batcher("pack", 16).even_rows(128, 64) == 64
  assert batching.Batcher("pack", 16).even_rows(10, 64) == 10
  assert batching.Batcher("pack", 16, row_multiple=8).even_rows(173, 64) == 64
  assert batching.Batcher("pack", 16, row_multiple=8).even_rows(150, 64) == 56
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 17, size=61)
  feats = {"input_ids": np.ones((61, 16), np.int32), "segment_ids": np.zeros((61, 16), np.int32),
           "input_mask": (np.arange(16)[None] < lengths[:, None]).astype(np.int32)}
  for mode in ("pack", "pad", "bucket"):
    batches = list(batching.Batcher(mode, 16, row_multiple=2).eval_batches(feats, 8))
    seen = np.concatenate([idx for _, idx, _ in batches])
    assert sorted(seen.tolist()) == list(range(61)), mode              # every feature once
    rows = {a["input_ids"].shape[0] for a, _, _ in batches}
    assert len(rows) == 1 and rows.pop() <= 8, mode                      # one shape, <= batch
    if mode != "pack":                                                   # 61 -> 8 x 8 = 64 rows
      assert sum(a["input_ids"].shape[0] for a, _, _ in batches) == 64, mode


def test_plan_row_counts_trades_compiles_for_rows():
  needed = [3] * 32 + [4] * 85 + [5] * 8                   # SST-2's first 4,000 rows, batch 32
  assert batching.plan_row_counts(needed, 1, 160) == (5,)  # one compile beats 141 extra rows
  assert batching.plan_row_counts(needed, 1, 10) == (3, 4, 5)    # cheap compiles: no waste
  assert batching.plan_row_counts(needed, 1, 40) == (4, 5)
  assert batching.plan_row_counts([13] * 100 + [16] * 10, 1, 50) == (13, 16)
  assert batching.plan_row_counts([3, 5, 9], 4, 0.5) == (4, 8, 12)      # multiples of devices
  import itertools                                          # the least cost, by brute force
  rng = np.random.default_rng(0)
  for _ in range(20):
    needed = list(rng.integers(1, 12, size=40))
    cost = float(rng.choice([1.0, 8.0, 40.0]))
    def total(counts):
      return len(counts) * cost + sum(min(c for c in counts if c >= r) for r in needed)
    values = sorted(set(needed))
    best = min(total(set(sub) | {values[-1]}) for n in range(len(values))
               for sub in itertools.combinations(values[:-1], n))
    assert total(batching.plan_row_counts(needed, 1, cost)) == pytest.approx(best)


def test_planned_rows_follow_the_runs_batches_and_survive_resume():
  from bertjax.tasks import featurize
  feats = _toy_features()
  feats = {k: np.concatenate([v] * 8) for k, v in feats.items()}         # 40 features
  def batches(cost):
    it = batching.TrainBatches(feats, featurize.BatchIterator(feats, 8, seed=3),
                               batching.Batcher("pack", 12, row_multiple=2))
    return it, it.plan_rows(10, cost)
  it, counts = batches(1000.0)
  assert len(counts) == 1 and counts[0] % 2 == 0                        # one shape
  assert it.order.get_state() == {"epoch": 0, "pos": 0, "seed": 3}      # order untouched
  got = [next(it) for _ in range(10)]
  assert {len(b["input_ids"]) for b in got} == set(counts)
  plain = batching.TrainBatches(feats, featurize.BatchIterator(feats, 8, seed=3),
                                batching.Batcher("pack", 12, row_multiple=2))
  for b, p in zip(got, (next(plain) for _ in range(10))):  # only padding rows differ
    n = len(p["input_ids"])
    for k in p:
      np.testing.assert_array_equal(b[k][:min(n, len(b[k]))], p[k][:min(n, len(b[k]))])
    assert b["example_weight"].sum() == p["example_weight"].sum() == 8
  resumed, again = batches(1000.0)                          # a resumed run plans the same
  resumed.set_state(it.get_state())
  assert again == counts
  assert batches(0.0)[1] == () and len({len(b["input_ids"]) for b in got}) == 1


def test_first_fit_decreasing_places_every_item_within_capacity():
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 17, size=50)
  bins = batching.first_fit_decreasing(lengths, 16)
  assert sorted(i for b in bins for i in b) == list(range(50))
  assert all(lengths[b].sum() <= 16 for b in bins)
  assert len(bins) <= -(-lengths.sum() // 16) * 1.25 + 1                 # FFD packs tightly


def test_slots_are_the_fewest_that_cost_no_rows():
  assert batching.slot_choices(128) == (8, 16, 32, 64)
  assert batching.slot_choices(16) == (8,)
  rng = np.random.default_rng(0)
  lengths = rng.integers(2, 9, size=60)
  for k in (3, 5):                                    # at most k a row, every item placed
    bins = batching.first_fit_decreasing(lengths, 32, k)
    assert max(map(len, bins)) <= k and sorted(i for b in bins for i in b) == list(range(60))
    assert all(lengths[b].sum() <= 32 for b in bins)
  assert batching.fewest_slots(128, lambda k: k >= 16) == 16
  assert batching.fewest_slots(128, lambda k: False) == 64
  # Evaluation: 8-12 token features in 64-token rows take 8 slots a row, not 32, and as many
  # rows as unlimited slots would.
  lengths = rng.integers(8, 13, size=60)
  feats = {"input_ids": np.ones((60, 64), np.int32), "segment_ids": np.zeros((60, 64), np.int32),
           "input_mask": (np.arange(64)[None] < lengths[:, None]).astype(np.int32)}
  batches = list(batching.Batcher("pack", 64).eval_batches(feats, 64))
  assert [a["cls_positions"].shape for a, _, _ in batches] == [
      (len(batching.first_fit_decreasing(lengths, 64)), 8)]
  # Training: the fewest slots with which no planned batch needs more rows.
  from bertjax.tasks import featurize
  it = batching.TrainBatches(feats, featurize.BatchIterator(feats, 30, seed=0),
                             batching.Batcher("pack", 64))
  counts = it.plan_rows(4, 160.0)
  assert it.batcher.slots == 8 and {next(it)["cls_positions"].shape for _ in range(4)} == {
      (counts[-1], 8)}
  tight = {**feats, "input_mask": (np.arange(64)[None] < 2).astype(np.int32).repeat(60, 0)}
  it = batching.TrainBatches(tight, featurize.BatchIterator(tight, 30, seed=0),
                             batching.Batcher("pack", 64))
  it.plan_rows(4, 160.0)                              # 30 two-token features fill one row
  assert it.batcher.slots == 32 and next(it)["cls_positions"].shape == (1, 32)


def _toy_features():
  s = 12
  lengths = [5, 3, 7, 4, 2]
  ids = np.zeros((5, s), np.int32)
  for f, n in enumerate(lengths):
    ids[f, :n] = 10 * (f + 1) + np.arange(n)
  return {"input_ids": ids, "segment_ids": (ids > 0).astype(np.int32) * (np.arange(s) % 2),
          "input_mask": (ids > 0).astype(np.int32), "label": np.arange(5, dtype=np.int32),
          "start_positions": np.asarray([1, 2, 3, 1, 0], np.int32)}


def test_packed_layout_ids_positions_slots():
  feats = _toy_features()
  arrays, layout = batching.Batcher("pack", 12, row_multiple=2).batch(feats, np.arange(5))
  r, k = arrays["cls_positions"].shape
  assert r % 2 == 0 and k == 6 and arrays["input_ids"].shape == (r, 12)
  for f in range(5):
    row, slot, off, n = layout.row[f], layout.slot[f], layout.offset[f], layout.length[f]
    np.testing.assert_array_equal(arrays["input_ids"][row, off:off + n], feats["input_ids"][f, :n])
    np.testing.assert_array_equal(arrays["segment_ids"][row, off:off + n],
                                  feats["segment_ids"][f, :n])
    assert (arrays["input_mask"][row, off:off + n] == slot + 1).all()   # its own example id
    np.testing.assert_array_equal(arrays["position_ids"][row, off:off + n], np.arange(n))
    assert arrays["cls_positions"][row, slot] == off
    assert arrays["label"][row, slot] == feats["label"][f]
    assert arrays["start_positions"][row, slot] == feats["start_positions"][f] + off
    assert arrays["example_weight"][row, slot] == 1.0
  assert arrays["example_weight"].sum() == 5
  assert (arrays["input_mask"] > 0).sum() == sum(layout.length) + (r - len(set(layout.row)))


def test_bucket_layout_cuts_rows_to_the_bucket():
  feats = _toy_features()
  b = batching.Batcher("bucket", 12, (4, 8, 12))
  arrays, _ = b.batch(feats, np.asarray([1, 3]))
  assert arrays["input_ids"].shape == (2, 4)
  arrays, _ = b.batch(feats, np.asarray([1, 2]), rows=4)               # 7 tokens -> 8; 2 pad rows
  assert arrays["input_ids"].shape == (4, 8) and arrays["input_mask"][2:].sum() == 2
  with pytest.raises(UserError, match="finetune.batching='packed'"):
    batching.Batcher("packed", 12)


# --------------------------------------------------------------- predictions equal padded

def _write_family_data(tmp_path, family):
  rng = np.random.default_rng(5)
  d = tmp_path / family
  d.mkdir()
  if family in ("classification", "regression"):
    rows = []                          # 3 to 14 tokens: all three buckets, a few per row
    for _ in range(40):
      y = int(rng.integers(2))
      rows.append((" ".join(rng.choice(WORDS[:9], size=rng.integers(0, 12)).tolist() +
                            ["good" if y else "bad"]), y))
    for split in ("train", "dev"):
      body = [f"{t}\t{'pos' if y else 'neg'}" if family == "classification" else
              f"{t}\t{float(y) + 0.25 * i % 1}" for i, (t, y) in enumerate(rows)]
      (d / f"{split}.tsv").write_text("\n".join(["text\tlabel"] + body) + "\n")
    return d
  if family == "tagging":
    tags = {"peter": "I-PER", "paris": "I-LOC"}
    lines = []
    for _ in range(30):
      for w in rng.choice(WORDS, size=rng.integers(1, 18)):   # some longer than a 16-token row
        lines.append(f"{w} NN O {tags.get(w, 'O')}")
      lines.append("")
    for split in ("train", "dev"):
      (d / f"{split}.txt").write_text("\n".join(lines))
    return d
  ctx = "peter went to paris . the movie was good . the plot was bad ."
  qas = [{"id": f"q{i}", "question": q,
          "answers": [{"text": "paris", "answer_start": ctx.index("paris")}]}
         for i, q in enumerate(["where did peter go ?", "where ?", "peter went where ?"] * 4)]
  short = {"context": "paris .", "qas": [{"id": f"s{i}", "question": q, "answers": [
      {"text": "paris", "answer_start": 0}]} for i, q in enumerate(["where ?", "go ?", "?"])]}
  data = {"version": "1.1", "data": [{"title": "a", "paragraphs": [{"context": ctx, "qas": qas},
                                                                   short]}]}
  for split in ("train", "dev"):
    (d / f"{split}-v1.1.json").write_text(json.dumps(data))
  return d


TASKS = {"classification": ("tsv", {}), "regression": ("tsv", {"regression": True}),
         "tagging": ("conll2003", {}), "span": ("squad", {"doc_stride": 6})}


@pytest.mark.parametrize("family,pooling", [("classification", "pooler"),
                                            ("classification", "mean"),
                                            ("classification", "cls"),
                                            ("regression", "pooler"), ("tagging", "pooler"),
                                            ("span", "pooler")])
def test_bucketed_and_packed_predictions_equal_padded(tmp_path, family, pooling):
  """f32, random weights large enough that a wrong position, attention block or pooled token
  would move the outputs far beyond 1e-5: every feature's outputs agree in all three layouts."""
  task, extra = TASKS[family]
  data = _write_family_data(tmp_path, family)
  cfg = tiny_cfg(tmp_path, task, data, pooling=pooling, eval_batch_size=8,
                 bucket_lengths="4,8", **extra)
  cfg.model.dtype = "float32"
  cfg.model.initializer_range = 0.3
  job = finetune.build(cfg)
  params = job.task.init_params(jax.random.PRNGKey(1), next(job.task.train_iter))
  feats = job.evals[0].features
  lengths = feats["input_mask"].sum(1)
  assert len({min(b for b in (4, 8, 16) if b >= n) for n in lengths}) >= 2  # several buckets
  out = {}
  for mode in ("pad", "bucket", "pack"):
    job.batcher = batching.Batcher(mode, 16, (4, 8, 16), 8)
    out[mode] = job.raw_outputs(params, feats)
  ref = jax.tree_util.tree_leaves(out["pad"])
  assert np.abs(ref[0]).max() > 0.1                                    # not all ~0
  for mode in ("bucket", "pack"):
    for a, b in zip(ref, jax.tree_util.tree_leaves(out[mode])):
      real = np.broadcast_to(a > np.finfo(np.float32).min, a.shape)
      np.testing.assert_allclose(b[real], a[real], atol=1e-5, rtol=0)
  # Packing put several examples in a row (else it tested nothing).
  _, layout = batching.Batcher("pack", 16, (), 8).batch(feats, np.arange(len(lengths)))
  share = 1.0 if family == "span" else 0.75          # SQuAD windows mostly fill their rows
  assert len(set(layout.row.tolist())) < share * len(lengths)


@pytest.mark.parametrize("pooling", ["pooler", "cls"])
def test_packed_rows_with_fewer_slots_give_the_padded_predictions(tmp_path, pooling):
  """32-token rows hold up to 10 short examples; evaluation packs them with 8 slots a row (not
  16) and the encoder's last layer runs at those 8 slots only: the padded outputs still."""
  task, extra = TASKS["classification"]
  cfg = tiny_cfg(tmp_path, task, _write_family_data(tmp_path, "classification"),
                 pooling=pooling, eval_batch_size=8, max_seq_length=32, **extra)
  cfg.model.dtype = "float32"
  cfg.model.initializer_range = 0.3
  job = finetune.build(cfg)
  params = job.task.init_params(jax.random.PRNGKey(1), next(job.task.train_iter))
  feats = job.evals[0].features
  packed = list(batching.Batcher("pack", 32, (), 8).eval_batches(feats, 8))
  assert {a["cls_positions"].shape[1] for a, _, _ in packed} == {8}
  assert max(a["example_weight"].sum(1).max() for a, _, _ in packed) > 2   # rows are shared
  out = {}
  for mode in ("pad", "pack"):
    job.batcher = batching.Batcher(mode, 32, (), 8)
    out[mode] = job.raw_outputs(params, feats)
  assert np.abs(out["pad"]).max() > 0.1
  np.testing.assert_allclose(out["pack"], out["pad"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["classification", "regression"])
def test_packed_loss_equals_padded_loss(tmp_path, family):
  """The same 16 examples, padded and packed: the same loss and accuracy/mse (dropout off)."""
  task, extra = TASKS[family]
  cfg = tiny_cfg(tmp_path, task, _write_family_data(tmp_path, family), **extra)
  cfg.model.dtype = "float32"
  cfg.model.initializer_range = 0.3
  job = finetune.build(cfg)
  params = job.task.init_params(jax.random.PRNGKey(2), next(job.task.train_iter))
  feats = {k: job.train_features[k] for k in finetune.INPUTS + tuple(job.family.targets)}
  idx = np.arange(16)
  got = {}
  for mode in ("pad", "pack"):
    batch, _ = batching.Batcher(mode, 16, (), 8).batch(feats, idx)
    den = finetune.example_count(batch) if mode == "pack" else None
    loss, metrics = finetune.loss_fn(job.model, job.family, params, batch, None, den)
    metrics = {k: float(v) / float(metrics.get(k + "_weight", 1.0)) for k, v in metrics.items()
               if not k.endswith("_weight")}
    got[mode] = (float(loss), metrics)
  assert got["pack"][0] == pytest.approx(got["pad"][0], abs=1e-5)
  for k, v in got["pad"][1].items():
    assert got["pack"][1][k] == pytest.approx(v, abs=1e-5)


def test_train_batches_split_one_global_layout_over_processes(tmp_path):
  from bertjax.tasks import featurize
  feats = _toy_features()
  feats = {k: np.concatenate([v] * 4) for k, v in feats.items()}         # 20 features
  b = batching.Batcher("pack", 12, row_multiple=4)
  whole = next(batching.TrainBatches(feats, featurize.BatchIterator(feats, 8, seed=1), b))
  parts = [next(batching.TrainBatches(feats, featurize.BatchIterator(feats, 8, seed=1), b, p, 2))
           for p in range(2)]
  for k, v in whole.items():
    np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), v)
  assert whole["example_weight"].sum() == 8


def test_fast_bf16_cpu_flags():
  from bertjax import config
  avx2 = ["processor : 0", "flags : fpu sse2 avx avx2 fma"]
  assert not config.cpu_has_fast_bf16(avx2)
  assert config.cpu_has_fast_bf16(["flags : fpu avx2 avx512f avx512_bf16"])   # Zen 4
  assert config.cpu_has_fast_bf16(["flags : fpu avx512f amx_bf16 amx_tile"])  # Sapphire Rapids
  assert not config.cpu_has_fast_bf16(["model name : avx512_bf16 in a name, not a flag"])


def test_fast_bf16_env_pins_auto(monkeypatch):
  from bertjax import config
  for value, want in (("1", True), ("0", False)):
    monkeypatch.setenv("BERTJAX_FAST_BF16", value)
    config.fast_bf16.cache_clear()
    assert config.fast_bf16() is want
  config.fast_bf16.cache_clear()


def test_auto_dtype_in_the_model(monkeypatch):
  from bertjax import config, model
  import jax.numpy as jnp
  cfg = config.model_config("tiny")
  cfg.dtype = "auto"
  monkeypatch.setattr(config, "fast_bf16", lambda: True)
  assert model.dtype_of(cfg) == jnp.bfloat16
  monkeypatch.setattr(config, "fast_bf16", lambda: False)
  assert model.dtype_of(cfg) == jnp.float32


def test_auto_dtype_resolves_per_hardware(monkeypatch, tmp_path):
  from bertjax import config
  monkeypatch.setattr(config, "fast_bf16", lambda: True)
  assert config.resolve_dtype("auto") == "bfloat16"
  monkeypatch.setattr(config, "fast_bf16", lambda: False)
  assert config.resolve_dtype("auto") == "float32"
  assert config.resolve_dtype("bfloat16") == "bfloat16"
  for split in ("train", "dev"):
    (tmp_path / f"{split}.tsv").write_text("text\tlabel\ngood\t1\n")
  cfg = tiny_cfg(tmp_path, "tsv", tmp_path)
  assert cfg.model.dtype == "auto"                                     # the fine-tuning default
  finetune.build(cfg)
  assert cfg.model.dtype == "float32"
