"""Pretraining trains like the reference: the one trainer, fed replayed batches, takes the same
steps as transformers' FlaxBertForPreTraining trained with the same optax chain from the same
weights (the torch-free slice of benchmarks/pretrain_compare.py; no dropout, so the two runs
differ only by arithmetic). Also the replay iterator those comparisons feed both sides with.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax.weights import interop
from bertjax.config import base_config, model_config
from bertjax.data.replay import ReplayIterator, load_batches, save_batches
from bertjax.optim import make_optimizer
from bertjax.train.loop import train
from bertjax.train.pretrain import SyntheticIterator, pretrain_task
from bertjax.train.state import batch_spec, init_state

STEPS = 6


def tiny_cfg():
  c = base_config()
  c.model = model_config("tiny", vocab_size=96, max_position_embeddings=32)
  c.model.hidden_size, c.model.intermediate_size = 32, 64
  c.model.hidden_dropout_prob = c.model.attention_probs_dropout_prob = 0.0
  c.data.max_seq_length, c.data.max_predictions_per_seq = 24, 4
  c.optim.learning_rate, c.optim.warmup_steps = 3e-3, 2   # big enough that the steps matter
  c.optim.clip_norm = 0.5                                  # and clipping acts (grad norm ~1-3)
  c.train.global_batch_size, c.train.num_steps = 8, STEPS
  c.train.log_every, c.train.eval_every = 1, 0
  c.checkpoint.every_steps, c.checkpoint.async_save = 1000, False
  return c


def test_replay_round_trip(tmp_path):
  batches = [next(SyntheticIterator(tiny_cfg(), seed=s)) for s in range(3)]
  save_batches(str(tmp_path / "b.npz"), batches)
  it = ReplayIterator(load_batches(str(tmp_path / "b.npz")))
  assert next(it)["input_ids"].tolist() == batches[0]["input_ids"].tolist()
  state = it.get_state()
  second = next(it)
  it.set_state(state)                                      # resume re-reads the same batch
  np.testing.assert_array_equal(next(it)["masked_lm_ids"], second["masked_lm_ids"])
  np.testing.assert_array_equal(next(it)["masked_lm_ids"], batches[2]["masked_lm_ids"])
  with pytest.raises(StopIteration):
    next(it)


def test_trainer_steps_equal_flax_reference(tmp_path):
  transformers = pytest.importorskip("transformers")
  cfg = tiny_cfg()
  batches = [next(SyntheticIterator(cfg, seed=s)) for s in range(STEPS)]
  task = pretrain_task(cfg, synthetic=True)
  init = jax.device_get(init_state(task.init_params, optax.identity(), 0,
                                   batch_spec(batches[0])).params)
  hf_dir = str(tmp_path / "init")
  interop.save_hf(init, cfg.model, hf_dir)

  # ours: the one trainer on the replayed batches, starting from `init`
  task.train_iter = ReplayIterator(batches)
  task.eval_batches = None
  task.load_pretrained = lambda fresh: init
  summary = train(task, cfg, str(tmp_path / "ours"), progress=False)
  rows = [json.loads(l) for l in open(tmp_path / "ours" / "metrics.jsonl")]
  ours = [r for r in rows if "loss" in r]
  assert len(ours) == STEPS

  # the reference: transformers' Flax model, our optimizer chain over its own parameter tree
  model = transformers.FlaxBertForPreTraining.from_pretrained(hf_dir)
  tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)

  def loss_fn(params, b):
    out = model(b["input_ids"], attention_mask=b["input_mask"],
                token_type_ids=b["segment_ids"], params=params, train=False)
    mlm = jnp.take_along_axis(out.prediction_logits, b["masked_lm_positions"][..., None],
                              axis=1)                                          # [B, P, V]
    w = b["masked_lm_weights"]
    ce = optax.softmax_cross_entropy_with_integer_labels(mlm, b["masked_lm_ids"])
    nsp = optax.softmax_cross_entropy_with_integer_labels(out.seq_relationship_logits,
                                                          b["next_sentence_labels"])
    return (ce * w).sum() / w.sum() + nsp.mean()

  params, opt_state = model.params, tx.init(model.params)
  ref = []
  for b in batches:
    loss, grads = jax.value_and_grad(loss_fn)(params, b)
    ref.append((float(loss), float(optax.tree.norm(grads))))
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)

  np.testing.assert_allclose([r["loss"] for r in ours], [l for l, _ in ref], rtol=1e-5)
  np.testing.assert_allclose([r["grad_norm"] for r in ours], [g for _, g in ref], rtol=1e-4)
  # final weights: the tied word embeddings and the MLM output bias, on both sides
  final = jax.device_get(summary["state"].params)
  moved = np.abs(final["bert"]["embeddings"]["word_embeddings"]
                 - init["bert"]["embeddings"]["word_embeddings"]).max()
  assert moved > 1e-3
  np.testing.assert_allclose(final["bert"]["embeddings"]["word_embeddings"],
                             params["bert"]["embeddings"]["word_embeddings"]["embedding"],
                             atol=1e-5 * moved + 1e-7, rtol=0)
  np.testing.assert_allclose(final["mlm_output_bias"], params["cls"]["predictions"]["bias"],
                             atol=1e-6, rtol=1e-4)


def test_peer_schedule_is_ours():
  """The schedule benchmarks/pretrain_compare.py writes out for torch is bertjax's, step by step."""
  from benchmarks import pretrain_compare as pc
  from bertjax.optim import make_schedule
  cfg = tiny_cfg()
  cfg.optim.warmup_steps, cfg.train.num_steps, cfg.optim.end_learning_rate = 7, 40, 1e-5
  factor = pc._lr_factor(pc.recipe(cfg))
  ours = make_schedule(cfg.optim, cfg.train.num_steps)
  for t in range(cfg.train.num_steps + 3):
    np.testing.assert_allclose(factor(t) * cfg.optim.learning_rate, float(ours(t)), rtol=1e-6,
                               atol=1e-12)


def test_compare_params_and_steps(tmp_path):
  from safetensors.numpy import save_file
  from benchmarks import pretrain_compare as pc
  a = {"x": np.ones((2, 3), np.float32), "y": np.full(4, 2.0, np.float32)}
  b = {"x": np.ones((2, 3), np.float32), "y": np.array([2.0, 2.0, 2.0, 2.2], np.float32)}
  save_file(a, str(tmp_path / "a.safetensors"))
  save_file(b, str(tmp_path / "b.safetensors"))
  p = pc.compare_params(str(tmp_path / "a.safetensors"), str(tmp_path / "b.safetensors"))
  assert p["worst_tensor"] == "y" and p["max_abs"] == pytest.approx(0.2, rel=1e-5)
  assert p["rel_l2"] == pytest.approx(0.2 / np.sqrt(6 + 12 + 2.2 ** 2), rel=1e-5)
  ours = [{"loss": 1.0, "mlm_loss": 0.5, "nsp_loss": 0.5, "grad_norm": 2.0, "lr": 0.0}] * 3
  peer = [dict(r) for r in ours]
  peer[2] = dict(peer[2], loss=1.001)
  s = pc.compare_steps(ours, peer, 1e-4)
  assert s["loss"]["first_step_above_tol"] == 3 and s["loss"]["at_step"] == 3
  assert s["mlm_loss"]["max_rel"] == 0.0 and s["mlm_loss"]["first_step_above_tol"] is None


def test_seeded_summary_against_the_larger_spread():
  from benchmarks import pretrain_compare as pc
  ev = lambda mlm: {"eval_mlm_loss": mlm, "eval_mlm_acc": 0.1, "eval_nsp_loss": 0.7,
                    "eval_nsp_acc": 0.5}
  runs = {str(s): {"ours": {"eval": ev(o)}, "peer": {"eval": ev(p)}}
          for s, (o, p) in enumerate([(6.0, 6.2), (6.1, 6.2), (6.2, 6.2)])}
  s = pc.seeded_summary(runs)["eval_mlm_loss"]
  assert s["mean"]["ours"] == pytest.approx(6.1) and s["spread"]["peer"] == 0.0
  assert s["mean_gap"] == pytest.approx(0.1) and s["within_larger_spread"]  # 0.1 <= 0.2
  runs["2"]["ours"]["eval"] = ev(6.05)                  # ours' spread 0.1, gap 0.15: outside
  assert not pc.seeded_summary(runs)["eval_mlm_loss"]["within_larger_spread"]


def test_class_balance_names_a_one_class_handover():
  from benchmarks import pretrain_compare as pc
  gold = ["1", "0", "1", "1"]
  b = pc.class_balance(["1", "1", "1", "1"], gold)
  assert b["predicted"] == {"0": 0, "1": 4} and b["gold"] == {"0": 1, "1": 3}
  assert b["majority_accuracy"] == 75.0
  assert pc.class_balance([0, 1, 1, 0], [0, 1, 0, 1])["predicted"] == {"0": 2, "1": 2}


def test_handover_probe_freezes_the_encoder_on_our_side():
  """--freeze encoder (the handover's linear probe) reaches bertjax as finetune.freeze=encoder,
  whose predicate holds every leaf under `bert` (the peer freezes `model.bert`) and no head leaf."""
  import argparse
  from benchmarks import finetune_compare as fc
  from bertjax.tasks.finetune import freeze_predicate
  args = argparse.Namespace(task="sst2", data="d", init="i", ours_init="", lr=1e-2, eps=1e-6,
                            weight_decay=0.01, warmup=0.1, batch=32, seed=0, epochs=3.0, seq=64,
                            max_train=2000, max_eval=0, dtype="float32", batching="",
                            deterministic=True, freeze="encoder", float64=False)
  assert "--config.finetune.freeze=encoder" in fc.ours_cmd(args, "w")
  args.freeze = "none"
  assert not any("finetune.freeze" in c for c in fc.ours_cmd(args, "w"))
  frozen = freeze_predicate("encoder")
  assert frozen(("bert", "pooler", "dense", "kernel"))
  assert frozen(("bert", "embeddings", "word_embeddings", "embedding"))
  assert not frozen(("classifier", "dense", "kernel"))
