"""bertjax.train.score: one held-out scoring for runs of either objective (benchmarks/
bench_recipes.py compares recipes with it).

Two runs of a very small model (L=1, H=32) on the bundled corpus, 6 steps each, sharing one
prepared copy: the MLM recipe (configs/pretrain_demo.py) and BERT-2018's (NSP pairs). Budget:
~30 s on a busy CPU (preparing the corpus is most of it)."""
import os

import numpy as np
import pytest

from bertjax.config import load_config
from bertjax.errors import UserError
from bertjax.train import score
from bertjax.train.pretrain import run_pretraining

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
         "model.intermediate_size=64", "train.num_steps=6", "train.budget_minutes=0",
         "train.phase2_start=0", "train.global_batch_size=8", "train.log_every=2",
         "train.eval_every=0", "train.eval_batches=2", "checkpoint.every_steps=0",
         "mesh.data=1"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("score")
  prepared = str(root / "prepared")
  cwd = os.getcwd()
  os.chdir(REPO)  # the configs' data paths are relative to the repository root
  try:
    out = {}
    for name, config in (("mlm", "configs/pretrain_demo.py"),
                         ("nsp", "configs/pretrain_bert2018.py")):
      cfg = load_config(config, SMALL + [f"data.prepared_dir={prepared}"])
      workdir = str(root / name)
      out[name] = (cfg, workdir, run_pretraining(cfg, workdir, export=False, progress=False))
    yield out, prepared
  finally:
    os.chdir(cwd)


def test_mlm_run_scores_as_its_own_final_eval(runs):
  (cfg, workdir, summary), prepared = runs[0]["mlm"], runs[1]
  got = score.score_heldout(workdir, prepared)   # the run's rate (0.15), seed and batch count
  ev = summary["eval"]
  assert got["step"] == 6
  np.testing.assert_allclose(got["mlm_loss"], ev["eval_mlm_loss"], rtol=1e-5)
  np.testing.assert_allclose(got["mlm_acc"], ev["eval_mlm_acc"], rtol=1e-5)
  assert got["masked_tokens"] > 0
  # Packed rows: under 1% padding; the training token rate comes from metrics.jsonl.
  assert 0.0 <= score.train_padding_fraction(cfg, prepared, batches=4) < 0.01
  assert score.train_token_rate(workdir) > 0


def test_nsp_run_scores_on_the_same_masked_tokens(runs):
  (cfg, workdir, _), prepared = runs[0]["nsp"], runs[1]
  mlm_workdir = runs[0]["mlm"][1]
  got = score.score_heldout(workdir, prepared, eval_batches=2, seed=0, batch_size=8)
  ref = score.score_heldout(mlm_workdir, prepared, eval_batches=2, seed=0, batch_size=8)
  assert np.isfinite(got["mlm_loss"]) and 0.0 <= got["mlm_acc"] <= 1.0
  assert got["masked_tokens"] == ref["masked_tokens"]          # the same held-out rows
  assert got["mlm_loss"] != ref["mlm_loss"]                    # but another model
  # Segment pairs pad more than packed rows (short_seq_prob, sentence boundaries).
  assert score.train_padding_fraction(cfg, prepared, batches=4) > 0.01


def test_a_workdir_without_checkpoints_is_one_clear_error(tmp_path, runs):
  with pytest.raises(UserError, match="no checkpoints"):
    score.score_heldout(str(tmp_path), runs[1])


def test_mask_only_scores_the_same_tokens_all_masked(runs):
  """80/10/10 leaves a tenth of the scored tokens visible; mask_only scores the very same
  positions and labels with every one of them [MASK]ed (what the run's summary prints too)."""
  from bertjax.train.pretrain import pretrain_task
  (cfg, workdir, summary), prepared = runs[0]["mlm"], runs[1]
  plain = score.score_heldout(workdir, prepared)
  at_mask = score.score_heldout(workdir, prepared, mask_only=True)
  assert at_mask["masked_tokens"] == plain["masked_tokens"]
  assert at_mask["baseline"] == plain["baseline"] == summary["mlm_baseline"]
  assert at_mask["mlm_loss"] != plain["mlm_loss"]
  for k in ("mlm_loss", "mlm_acc", "masked_tokens"):
    np.testing.assert_allclose(summary["heldout_at_mask"][k], at_mask[k], rtol=1e-6)
  c = score._scoring_config(cfg, prepared, 0.15, 2, 0, 8, mask_only=True)
  b = pretrain_task(c, workdir).eval_batches()[0]
  seen = np.take_along_axis(np.asarray(b["input_ids"]), np.asarray(b["masked_lm_positions"]), 1)
  assert len(np.unique(seen[np.asarray(b["masked_lm_weights"]) > 0])) == 1     # all [MASK]
