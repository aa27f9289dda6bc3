"""The trainer: compile once, data parallel == one device, accumulation == big batch,
two phases, exact resume after SIGTERM, evaluation, curves, config errors before compiling.

Budget: this file ~1-2 min on 2 busy cores (tiny model, synthetic batches)."""
import json
import os

import jax
import numpy as np
import pytest

import reliability_util as R

from bertjax import cli, sharding as shd
from bertjax.config import base_config, model_config
from bertjax.errors import UserError
from bertjax.optim import make_optimizer
from bertjax.train.loop import train
from bertjax.train.pretrain import SyntheticIterator, pretrain_task
from bertjax.train.state import abstract_state, create_state
from bertjax.train.step import make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_cfg(dropout=0.0):
  c = base_config()
  c.model = model_config("tiny", vocab_size=96, max_position_embeddings=64)
  m = c.model
  m.hidden_size, m.num_attention_heads, m.intermediate_size, m.num_hidden_layers = 32, 2, 64, 1
  m.hidden_dropout_prob = m.attention_probs_dropout_prob = dropout
  c.data.max_seq_length, c.data.max_predictions_per_seq = 16, 4
  c.train.global_batch_size, c.train.num_steps, c.train.log_every = 32, 5, 1
  c.train.eval_every, c.train.eval_batches = 0, 2
  c.optim.learning_rate, c.optim.warmup_steps = 1e-2, 2
  c.checkpoint.every_steps = 0
  return c


def run_steps(cfg, mesh, n=5):
  """n steps of the real jitted step on `mesh`; returns (losses, params, step)."""
  task = pretrain_task(cfg, synthetic=True)
  tx, schedule = make_optimizer(cfg.optim, cfg.train.num_steps)
  it = SyntheticIterator(cfg, 0, seed=7)
  first = next(it)
  _, shardings = abstract_state(task.init_params, tx, 0, first, mesh)
  state = create_state(task.init_params, tx, 0, first, mesh)
  step = make_train_step(task.loss_fn, tx, mesh, shardings, schedule=schedule,
                         grad_accum_steps=cfg.train.grad_accum_steps,
                         loss_denominators=task.loss_denominators)
  losses, batch = [], first
  for _ in range(n):
    state, m = step(state, shd.shard_batch(batch, mesh))
    losses.append(float(m["loss"]))
    batch = next(it)
  return np.array(losses), jax.device_get(state.params), step


def test_data_parallel_equals_one_device_and_compiles_once():
  cfg = tiny_cfg(dropout=0.1)  # dropout masks are sharding-invariant (threefry partitionable)
  cfg.mesh.data = 1
  one, _, _ = run_steps(cfg, shd.make_mesh(cfg.mesh))
  cfg.mesh.data = -1
  mesh8 = shd.make_mesh(cfg.mesh)
  assert shd.mesh_size(mesh8) == 8
  eight, _, step = run_steps(cfg, mesh8)
  assert step.traces == 1  # five calls, one trace: no retracing between steps
  assert np.ptp(one) > 1e-3  # the steps do change the model (the comparison is not vacuous)
  np.testing.assert_allclose(eight, one, atol=1e-5, rtol=0)


def test_create_state_with_load_equals_full_init_then_overwrite():
  """--init: only the leaves `load` keeps fresh are initialised, with a full init's values."""
  cfg = tiny_cfg()
  mesh = shd.make_mesh(cfg.mesh)
  task = pretrain_task(cfg, synthetic=True)
  tx, _ = make_optimizer(cfg.optim, cfg.train.num_steps)
  first = next(SyntheticIterator(cfg, 0, seed=7))
  full = jax.device_get(create_state(task.init_params, tx, 3, first, mesh))
  pretrained = jax.tree_util.tree_map(lambda x: np.full(x.shape, 0.5, np.float32),
                                      full.params["bert"])
  seen = []

  def load(fresh):
    seen.append(fresh)
    return {**fresh, "bert": pretrained}
  state = jax.device_get(create_state(task.init_params, tx, 3, first, mesh, load=load))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree_util.tree_leaves(seen[0]))
  want = {**full.params, "bert": pretrained}
  for a, b in zip(jax.tree_util.tree_leaves(state), jax.tree_util.tree_leaves(
      full.replace(params=want, opt_state=tx.init(want)))):
    np.testing.assert_array_equal(a, b)


def test_accumulation_4x8_equals_1x32():
  cfg = tiny_cfg()
  mesh = shd.make_mesh(cfg.mesh)
  big, params_big, _ = run_steps(cfg, mesh)
  cfg.train.grad_accum_steps = 4  # 4 micro-batches of 8 (one row per device each)
  acc, params_acc, step = run_steps(cfg, mesh)
  assert step.traces == 1
  np.testing.assert_allclose(acc, big, atol=1e-5, rtol=0)
  for a, b in zip(jax.tree_util.tree_leaves(params_acc), jax.tree_util.tree_leaves(params_big)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _two_phase_cfg():
  cfg = tiny_cfg(dropout=0.1)
  cfg.train.num_steps, cfg.train.phase2_start = 6, 4
  cfg.train.phase2_max_seq_length, cfg.train.phase2_max_predictions_per_seq = 32, 8
  cfg.train.eval_every = 3
  cfg.checkpoint.every_steps = 3
  return cfg


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _strip_timing(records):
  return [{k: v for k, v in r.items() if k not in ("seq_per_s", "tokens_per_s", "mfu")}
          for r in records]


@pytest.mark.slow
def test_two_phases_eval_and_exact_resume_after_sigterm(tmp_path):
  cfg = _two_phase_cfg()
  full = train(pretrain_task(cfg, synthetic=True), cfg, str(tmp_path / "full"), progress=False)
  assert full["steps"] == 6 and full["compiles"] == {0: 1, 1: 1}  # one compile per phase
  recs = _records(tmp_path / "full")
  assert [r["step"] for r in recs] == [1, 2, 3, 4, 5, 6]
  assert {"loss", "mlm_loss", "mlm_acc", "nsp_loss", "nsp_acc", "lr", "grad_norm",
          "seq_per_s", "tokens_per_s", "mfu"} <= set(recs[-1])
  evals = [r for r in recs if "eval_mlm_acc" in r]
  assert [r["step"] for r in evals] == [3, 6] and 0 <= evals[-1]["eval_nsp_acc"] <= 1
  assert os.path.getsize(tmp_path / "full" / "curves.png") > 1000

  # SIGTERM while drawing batch 2: the step finishes, a checkpoint is saved, train returns.
  task = pretrain_task(cfg, synthetic=True)
  task.train_iter = R.SignalAt(task.train_iter, 2)  # batch n feeds step n
  part = train(task, cfg, str(tmp_path / "resumed"), progress=False)
  assert part["stopped"] == "SIGTERM" and part["steps"] == 2
  # Same command again: resumes at step 2 (params, optimizer, RNG, data), crosses phase 2.
  rest = train(pretrain_task(cfg, synthetic=True), cfg, str(tmp_path / "resumed"),
               progress=False)
  assert rest["resumed_from"] == 2 and rest["steps"] == 6
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(rest["state"].params)),
                  jax.tree_util.tree_leaves(jax.device_get(full["state"].params))):
    np.testing.assert_array_equal(a, b)  # bitwise
  assert _strip_timing(_records(tmp_path / "resumed")) == _strip_timing(recs)

  assert cli.main(["plot", str(tmp_path / "full"), "--out", str(tmp_path / "c.png")]) == 0
  assert os.path.getsize(tmp_path / "c.png") > 1000

  # --init-from a workdir: params only, every leaf taken from its latest checkpoint.
  warm = pretrain_task(cfg, synthetic=True, init_from=str(tmp_path / "full"))
  fresh = jax.tree_util.tree_map(np.zeros_like, jax.device_get(full["state"].params))
  loaded = warm.load_pretrained(fresh)
  for a, b in zip(jax.tree_util.tree_leaves(loaded),
                  jax.tree_util.tree_leaves(jax.device_get(full["state"].params))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("override,field", [
    ("--config.model.num_attention_heads=3", "model.hidden_size"),
    ("--config.train.global_batch_size=12", "train.global_batch_size"),
    ("--config.data.max_seq_length=1024", "max_position_embeddings"),
    ("--config.train.batch_size=8", "train.global_batch_size"),  # unknown key + suggestion
    ("--config.data.corpus=/nonexistent/*.txt", "data.corpus"),
    ("--config.data.tokenizer=/nonexistent/spm.model", "data.tokenizer"),
])
def test_config_errors_are_one_line_before_compiling(override, field, tmp_path, capsys):
  rc = cli.main(["pretrain", "--config", os.path.join(REPO, "configs", "pretrain_demo.py"),
                 "--workdir", str(tmp_path), override])
  err = capsys.readouterr().err.strip()
  assert rc == 2, err
  assert len(err.splitlines()) == 1 and field in err, err
  assert not os.path.exists(tmp_path / "checkpoints")  # ended before training started


@pytest.mark.slow
def test_frozen_params_do_not_change(tmp_path):
  cfg = tiny_cfg()
  cfg.train.num_steps = 2
  task = pretrain_task(cfg, synthetic=True)
  task.frozen = lambda path: path[0] == "bert"
  out = train(task, cfg, str(tmp_path), progress=False)
  fresh = create_state(task.init_params, make_optimizer(cfg.optim, 2)[0], 0,
                       next(SyntheticIterator(cfg)), shd.make_mesh(cfg.mesh))
  new, old = jax.device_get(out["state"].params), jax.device_get(fresh.params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(new["bert"]),
                                                   jax.tree_util.tree_leaves(old["bert"])))
  assert not np.array_equal(new["nsp"]["kernel"], old["nsp"]["kernel"])


def test_curves_show_finetuning_metrics(tmp_path):
  """Fine-tuning logs loss, accuracy (a fraction) and eval_<metric> (percentages): the curves'
  metrics panel holds them (it once listed only the pretraining keys and stayed empty), with
  fractions scaled to percent beside them, and plotting raises no warning."""
  import warnings
  from bertjax.train.metrics import curve_panels, plot
  recs = [{"step": s, "loss": 0.7 - s / 1000, "accuracy": 0.5 + s / 1000, "lr": 1e-4,
           "grad_norm": 1.0, "seq_per_s": 40.0, "mfu": None} for s in (10, 20, 30)]
  recs[-1].update(eval_accuracy=71.5, eval_mcc=26.9)
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
  panels = dict(curve_panels(recs))
  assert panels["loss"] == ["loss"]
  assert panels["accuracy / eval metrics"] == ["accuracy", "eval_accuracy", "eval_mcc"]
  pre = curve_panels([{"step": 1, "loss": 5.0, "mlm_loss": 4.0, "nsp_loss": 0.6, "mlm_acc": 0.2,
                       "nsp_acc": 0.7, "eval_mlm_acc": 0.3, "lr": 1e-3, "seq_per_s": 500.0}])
  assert pre[0][1] == ["loss", "mlm_loss", "nsp_loss"]
  assert pre[1][1] == ["eval_mlm_acc", "mlm_acc", "nsp_acc"]
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    out = plot(str(tmp_path))
  assert os.path.getsize(out) > 1000
