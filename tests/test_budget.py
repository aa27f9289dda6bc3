"""Warmup-stable-decay and one-cycle schedules, token and wall-clock budgets, and a resumed
budget run that keeps its learning rate (no jump at the resume step).

Budget: ~35 s of CPU (one tiny MLM-only model on synthetic batches, two compiles)."""
import copy
import json
import os

import numpy as np
import pytest

import reliability_util as R

from bertjax import config as config_lib
from bertjax.config import base_config, model_config
from bertjax.errors import UserError
from bertjax.optim import budget_steps, make_schedule
from bertjax.train.loop import train
from bertjax.train.pretrain import BUDGET_FILE, pretrain_task, resolve_budget


def _ocfg(**kw):
  o = base_config().optim
  for k, v in kw.items():
    o[k] = v
  return o


def test_warmup_stable_decay():
  f = make_schedule(_ocfg(schedule="wsd", learning_rate=1.0, warmup_steps=10,
                          decay_fraction=0.25, end_learning_rate=0.0), 100)
  vals = np.array([float(f(i)) for i in range(101)])
  np.testing.assert_allclose(vals[:11], np.linspace(0, 1, 11), atol=1e-6)   # warmup
  np.testing.assert_allclose(vals[10:76], 1.0)                               # stable at the peak
  np.testing.assert_allclose(vals[75:], np.linspace(1, 0, 26), atol=1e-6)  # last 25%: decay
  # warmup_fraction replaces warmup_steps (a budget run does not know its length in advance)
  g = make_schedule(_ocfg(schedule="wsd", learning_rate=1.0, warmup_steps=500,
                          warmup_fraction=0.2, decay_fraction=0.5), 50)
  assert abs(float(g(5)) - 0.5) < 1e-6 and float(g(10)) == 1.0 and float(g(24)) == 1.0
  assert abs(float(g(37)) - 0.52) < 1e-6


def test_one_cycle():
  f = make_schedule(_ocfg(schedule="one_cycle", learning_rate=1.0, warmup_steps=30), 100)
  vals = np.array([float(f(i)) for i in range(101)])
  assert int(np.argmax(vals)) == 30 and abs(vals[30] - 1.0) < 1e-6
  assert abs(vals[0] - 1 / 25) < 1e-6 and vals[100] < 1e-4          # optax's div factors
  assert (np.diff(vals[:31]) > 0).all() and (np.diff(vals[30:]) < 0).all()


def test_budgets_set_num_steps():
  t = base_config().train
  t.budget_tokens = 10_000
  assert budget_steps(t, 32 * 128) == 3                 # ceil(10000 / 4096)
  t.budget_tokens, t.budget_minutes = 0, 2.0
  assert budget_steps(t, 4096, step_seconds=0.5) == 240
  cfg = base_config()
  cfg.train.budget_tokens, cfg.train.budget_minutes = 100, 1.0
  with pytest.raises(UserError, match="set one budget"):
    config_lib.validate(cfg)
  cfg.train.budget_minutes, cfg.optim.schedule = 0.0, "trapezoid"
  with pytest.raises(UserError, match="optim.schedule"):
    config_lib.validate(cfg)


def _tiny_mlm_cfg():
  c = base_config()
  c.model = model_config("tiny", vocab_size=96, max_position_embeddings=16)
  m = c.model
  m.hidden_size, m.num_attention_heads, m.intermediate_size, m.num_hidden_layers = 32, 2, 64, 1
  m.hidden_dropout_prob = m.attention_probs_dropout_prob = 0.0
  c.data.objective, c.data.max_seq_length, c.data.max_predictions_per_seq = "mlm", 16, 0
  c.train.global_batch_size, c.train.log_every, c.train.eval_every = 16, 1, 0
  c.train.budget_minutes = 1.0
  c.optim.schedule, c.optim.warmup_fraction, c.optim.decay_fraction = "wsd", 0.2, 0.5
  c.optim.learning_rate = 1e-2
  c.checkpoint.every_steps = 0
  return c


def test_budget_resume_keeps_the_schedule(tmp_path):
  wd = str(tmp_path / "run")
  cfg = _tiny_mlm_cfg()
  rec = resolve_budget(cfg, wd, measure=lambda c: 6.0)     # 1 min at 6 s/step -> 10 steps
  assert cfg.train.num_steps == 10 and rec["num_steps"] == 10
  task = pretrain_task(cfg, synthetic=True)
  assert task.model.nsp is False  # objective mlm builds no NSP head
  task.train_iter = R.SignalAt(task.train_iter, 4)
  part = train(task, cfg, wd, progress=False)
  assert part["stopped"] == "SIGTERM" and part["steps"] == 4
  assert "nsp" not in part["state"].params

  # The machine got 3x faster: a fresh resolution would give 30 steps; the resume keeps 10.
  again = _tiny_mlm_cfg()
  resolve_budget(again, wd, measure=lambda c: 2.0)
  assert again.train.num_steps == 10
  rest = train(pretrain_task(again, synthetic=True), again, wd, progress=False)
  assert rest["resumed_from"] == 4 and rest["steps"] == 10
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    lrs = {r["step"]: r["lr"] for r in map(json.loads, f) if "lr" in r}
  want = make_schedule(cfg.optim, 10)
  assert sorted(lrs) == list(range(1, 11))
  np.testing.assert_allclose([lrs[s] for s in range(1, 11)],
                             [float(want(s - 1)) for s in range(1, 11)], rtol=1e-6)

  # A changed budget is resolved again; a damaged record is a one-line error.
  other = copy.deepcopy(_tiny_mlm_cfg())
  other.train.budget_minutes = 2.0
  resolve_budget(other, wd, measure=lambda c: 6.0)
  assert other.train.num_steps == 20
  with open(os.path.join(wd, BUDGET_FILE), "w") as f:
    f.write("{not json")
  with pytest.raises(UserError, match=BUDGET_FILE):
    resolve_budget(_tiny_mlm_cfg(), wd, measure=lambda c: 6.0)
