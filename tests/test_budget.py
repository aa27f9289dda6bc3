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


def _two_phase_cfg(**train):
  """The tiny MLM config with a short-row first phase: S=8 x 32 rows, then S=16 x 16 rows."""
  c = _tiny_mlm_cfg()
  c.data.max_seq_length, c.train.global_batch_size = 8, 32
  c.train.phase2_max_seq_length, c.train.phase2_global_batch_size = 16, 16
  c.train.phase2_max_predictions_per_seq = 4
  for k, v in train.items():
    c.train[k] = v
  return c


def _by_phase(c):  # a fake step-time probe: 1 s on phase-1 rows, 3 s on phase-2 rows
  assert not c.train.phase2_start and not c.train.phase2_fraction   # one phase per probe
  return {8: 1.0, 16: 3.0}[c.data.max_seq_length]


def test_two_phase_budget_spends_the_minutes_over_both_phases(tmp_path):
  # A quarter of the steps at 1 s, the rest at 3 s: 60 s / (0.25 x 1 + 0.75 x 3) = 24 steps,
  # phase 2 from step 6.
  cfg = _two_phase_cfg(phase2_fraction=0.25)
  rec = resolve_budget(cfg, str(tmp_path / "a"), measure=_by_phase)
  assert cfg.train.num_steps == 24 and rec["step_seconds"] == [1.0, 3.0]
  assert config_lib.phase2_start(cfg.train) == 6 and cfg.train.phase2_start == 0
  # A resume reads the steps back (a faster machine changes nothing), so the start holds too.
  again = _two_phase_cfg(phase2_fraction=0.25)
  resolve_budget(again, str(tmp_path / "a"), measure=lambda c: 0.1)
  assert (again.train.num_steps, config_lib.phase2_start(again.train)) == (24, 6)
  # A larger budget on resume: more steps, and phase 2 moves with them (the config a checkpoint
  # is checked against holds the fraction, not a start).
  more = _two_phase_cfg(phase2_fraction=0.25, budget_minutes=2.0)
  resolve_budget(more, str(tmp_path / "a"), measure=_by_phase)
  assert (more.train.num_steps, config_lib.phase2_start(more.train)) == (48, 12)
  assert config_lib.resume_values(more) == config_lib.resume_values(cfg)

  # A fixed start: 10 steps at 1 s, then (60 - 10) / 3 = 16 more; a budget that ends inside
  # phase 1 is all phase-1 steps.
  fixed = _two_phase_cfg(phase2_start=10)
  resolve_budget(fixed, str(tmp_path / "b"), measure=_by_phase)
  assert fixed.train.num_steps == 26
  late = _two_phase_cfg(phase2_start=100)
  resolve_budget(late, str(tmp_path / "c"), measure=_by_phase)
  assert late.train.num_steps == 60
  # Tokens: phase 1 has 256 slots a step, phase 2 256 too: 2,560 tokens -> 10 steps.
  tok = _two_phase_cfg(phase2_fraction=0.5, budget_minutes=0.0, budget_tokens=2560)
  resolve_budget(tok, str(tmp_path / "d"), measure=_by_phase)
  assert tok.train.num_steps == 10


def test_phase2_fraction_is_validated():
  for bad in (1.0, -0.1):
    with pytest.raises(UserError, match="train.phase2_fraction"):
      config_lib.validate(_two_phase_cfg(phase2_fraction=bad))
  with pytest.raises(UserError, match="both set"):
    config_lib.validate(_two_phase_cfg(phase2_fraction=0.5, phase2_start=3))
  # phase 2's sequence length is checked against the position table once a fraction is set
  with pytest.raises(UserError, match="max_position_embeddings"):
    config_lib.validate(_two_phase_cfg(phase2_fraction=0.5, phase2_max_seq_length=32))


def test_a_short_row_first_phase_is_evaluated_and_scored_at_the_final_shapes(tmp_path):
  from bertjax.train.score import _scoring_config
  cfg = _two_phase_cfg(phase2_fraction=0.5, budget_minutes=0.0, num_steps=4, eval_batches=2)
  task = pretrain_task(cfg, synthetic=True)
  assert task.make_phase2_iter is not None and config_lib.phase2_start(cfg.train) == 2
  batches = task.eval_batches()
  assert len(batches) == 2
  assert batches[0]["input_ids"].shape == (16, 16)   # phase 2's 16 rows of 16, not 32 x 8
  assert next(task.train_iter)["input_ids"].shape == (32, 8)
  scoring = _scoring_config(cfg, str(tmp_path), 0.15, None, None, None)
  assert (scoring.data.max_seq_length, scoring.train.global_batch_size) == (16, 16)
  assert not scoring.train.phase2_start and not scoring.train.phase2_fraction
  # the whole run, through both phases' shapes (phase 2 from step 2)
  out = train(pretrain_task(cfg, synthetic=True), cfg, str(tmp_path / "run"), progress=False)
  assert out["steps"] == 4


def test_resume_values_compare_only_what_the_runs_use():
  from bertjax.checkpoint import compat
  rv = config_lib.resume_values
  old = _tiny_mlm_cfg().to_dict()
  del old["train"]["phase2_fraction"]             # a checkpoint written before the field
  one = _tiny_mlm_cfg()
  one.train.phase2_max_seq_length = 16            # phase 2 off: its shapes do not matter
  assert compat.value_diffs(rv(old), rv(one)) == []
  diffs = compat.value_diffs(rv(old), rv(_two_phase_cfg(phase2_fraction=0.5)))
  assert {d.split(":")[0] for d in diffs} >= {"train.phase2_fraction",
                                              "train.phase2_max_seq_length"}
