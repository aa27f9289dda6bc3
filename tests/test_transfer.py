"""Transfer modes (issue 9): partial freezing through the real trainer, layer-wise lr decay, POS
tagging from a CoNLL POS column with token accuracy. (Frozen encoder = linear probe through the
trainer: tests/test_tasks_finetune.py::test_frozen_encoder_is_bit_for_bit_unchanged.)
Budget: ~60 s with test_features.py on a loaded 2-core machine."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax.config import base_config, validate
from bertjax.errors import UserError
from bertjax.optim import layer_lr_scales, make_optimizer
from bertjax.tasks import finetune
from test_tasks_finetune import tiny_cfg


def _tree():
  z = lambda *s: np.zeros(s, np.float32)  # noqa: E731
  layer = lambda: {"attention": {"query": {"kernel": z(4, 4)}}, "output_norm": {"scale": z(4)}}  # noqa: E731
  return {"bert": {"embeddings": {"word_embeddings": z(10, 4)}, "layer_0": layer(),
                   "layer_1": layer(), "layer_2": layer(), "pooler": {"kernel": z(4, 4)}},
          "classifier": {"dense": {"kernel": z(4, 3)}}}


def _ocfg(**kw):
  o = base_config().optim
  for k, v in kw.items():
    o[k] = v
  return o


def test_layer_lr_decay_scales_each_layers_step():
  params = _tree()
  d = 0.5
  s = layer_lr_scales(params, d)
  assert s["bert"]["embeddings"]["word_embeddings"] == d ** 4          # L + 1, L = 3
  assert [s["bert"][f"layer_{i}"]["attention"]["query"]["kernel"] for i in range(3)] == \
      [d ** 3, d ** 2, d]
  assert s["bert"]["pooler"]["kernel"] == 1.0 and s["classifier"]["dense"]["kernel"] == 1.0
  # First AdamW step with unit gradients: |update| = lr x scale (Adam's step is ~1 per element).
  lr = 1e-2
  frozen = lambda path: path[1:2] == ("embeddings",)  # noqa: E731  (with freezing: L unchanged)
  tx, _ = make_optimizer(_ocfg(learning_rate=lr, warmup_steps=0, weight_decay=0.0,
                               layer_lr_decay=d), 10, frozen=frozen)
  grads = jax.tree_util.tree_map(jnp.ones_like, params)
  updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)

  def step(*path):  # mean |update| over the subtree's leaves
    leaves = jax.tree_util.tree_leaves(_get(updates, path))
    return float(np.mean([np.abs(np.asarray(x)).mean() for x in leaves]))
  assert step("bert", "embeddings") == 0.0
  for i in range(3):
    np.testing.assert_allclose(step("bert", f"layer_{i}"), lr * d ** (3 - i), rtol=1e-4)
  np.testing.assert_allclose(step("classifier"), lr, rtol=1e-4)
  np.testing.assert_allclose(step("bert", "pooler"), lr, rtol=1e-4)
  # Off by default; out-of-range values are a config error.
  assert base_config().optim.layer_lr_decay == 1.0
  cfg = base_config()
  cfg.optim.layer_lr_decay = 1.5
  with pytest.raises(UserError, match="layer_lr_decay"):
    validate(cfg, 1)


def _get(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def _pos_data(tmp_path, rng):
  """CoNLL columns (word POS chunk NER) where each word has one POS tag: learnable."""
  tag = {"the": "DET", "movie": "NOUN", "film": "NOUN", "plot": "NOUN", "acting": "NOUN",
         "was": "AUX", "is": "AUX", "good": "ADJ", "bad": "ADJ", "really": "ADV", "quite": "ADV",
         ".": "PUNCT"}
  words = list(tag)
  data = tmp_path / "pos"
  data.mkdir()
  for split, n in (("train", 96), ("dev", 32)):
    lines = ["-DOCSTART- -X- -X- O", ""]
    for _ in range(n):
      for w in rng.choice(words, size=rng.integers(3, 9)):
        lines.append(f"{w} {tag[w]} O O")
      lines.append("")
    (data / f"{split}.txt").write_text("\n".join(lines) + "\n")
  return data


@pytest.mark.slow
def test_pos_tagger_partial_freeze_and_layer_decay_through_trainer(tmp_path):
  """`--task pos` reads the POS column and reports token accuracy; freeze=embeddings with
  freeze_layers=1 keeps the embeddings and layer_0 bit-for-bit (no Adam moments) while layer_1
  and the head train; layer_lr_decay runs through the same trainer."""
  from bertjax.train import loop
  data = _pos_data(tmp_path, np.random.default_rng(0))
  cfg = tiny_cfg(tmp_path, "pos", data, num_epochs=3.0, freeze="embeddings", freeze_layers=1)
  cfg.model.num_hidden_layers = 2
  cfg.optim.layer_lr_decay = 0.8
  job = finetune.build(cfg)
  assert job.spec.primary_metric == "accuracy" and set(job.labels) >= {"DET", "NOUN", "ADJ"}
  first = {k: job.train_features[k][:16] for k in ("input_ids", "segment_ids", "input_mask")}
  before = job.task.init_params(jax.random.fold_in(jax.random.PRNGKey(cfg.train.seed), 0), first)
  summary = loop.train(job.task, cfg, str(tmp_path / "w"), mesh=job.mesh, progress=False)
  after = summary["state"].params
  for name in ("embeddings", "layer_0"):
    for a, b in zip(jax.tree_util.tree_leaves(before["bert"][name]),
                    jax.tree_util.tree_leaves(after["bert"][name])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  changed = lambda a, b: not np.array_equal(np.asarray(a), np.asarray(b))  # noqa: E731
  assert changed(before["bert"]["layer_1"]["output_norm"]["scale"],
                 after["bert"]["layer_1"]["output_norm"]["scale"])
  assert all(changed(a, b) for a, b in zip(jax.tree_util.tree_leaves(before["classifier"]),
                                           jax.tree_util.tree_leaves(after["classifier"])))
  frozen_size = sum(x.size for n in ("embeddings", "layer_0")
                    for x in jax.tree_util.tree_leaves(after["bert"][n]))
  total = sum(x.size for x in jax.tree_util.tree_leaves(after))
  moments = sum(x.size for x in jax.tree_util.tree_leaves(summary["state"].opt_state)
                if hasattr(x, "ndim") and x.ndim > 0)
  assert moments == 2 * (total - frozen_size)
  # Token accuracy on dev, written to eval_results.json, well above the majority tag.
  out = job.write_predictions(after, str(tmp_path / "w"))
  acc = out["results"]["dev"]["accuracy"] / 100.0  # percent, like conlleval's numbers
  gold = [t for s in job.evals[0].examples for t in s.tags]
  majority = max(gold.count(t) for t in set(gold)) / len(gold)
  assert acc > majority + 0.2, (acc, majority)
  saved = json.loads((tmp_path / "w" / "eval_results.json").read_text())
  assert saved["results"]["dev"]["accuracy"] == pytest.approx(100.0 * acc)
