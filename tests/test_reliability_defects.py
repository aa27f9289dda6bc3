"""The four defects of issue 16, each through the real `bertjax` CLI (tiny model, 1 CPU device):

  1. an empty held-out split (data.heldout_fraction=0) trains, checkpoints and exports;
  2. a config change that alters the optimizer state's structure is named in one line and
     nothing is moved; a transient error while restoring (MemoryError, EIO) leaves the
     checkpoint where it is, and the next run resumes from it;
  3. (multi-host preparation: tests/test_prepare_multihost.py)
  4. a fine-tuning workdir copies the --init tokenizer it records, not data.tokenizer;
and the smaller ones: a corrupt manifest.json of a prepared dir is one line.

Budget: ~1-2 min on 2 cores (a persistent compilation cache is shared by the runs).
"""
import json
import os

import pytest

import reliability_util as R


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  root = tmp_path_factory.mktemp("defects")
  return {"root": root, "prepared": str(root / "prepared"), "cache": str(root / "jit_cache")}


def env(base, tmp, faults=None):
  return R.fault_env(tmp, devices=1, faults=faults, cache_dir=base["cache"])


def args(base, workdir, num_steps, *extra, prepared=None):
  return R.tiny_pretrain_args(workdir, prepared or base["prepared"], num_steps, extra)


def committed_steps(workdir) -> list[int]:
  d = os.path.join(str(workdir), "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


@pytest.fixture(scope="module")
def two_steps(base, tmp_path_factory):
  """A workdir holding checkpoints of steps 2 and 4 (defaults: clip_norm=1, no layer decay)."""
  tmp = tmp_path_factory.mktemp("two_steps")
  wd = tmp / "wd"
  R.run_ok(args(base, wd, 4), env(base, tmp))
  assert committed_steps(wd) == [2, 4]
  return wd


# ----------------------------------------------------------------- 1. empty held-out split

@pytest.mark.parametrize("eval_every,every_steps", [(0, 0), (2, 2)])
def test_empty_heldout_split_trains_checkpoints_and_exports(base, tmp_path, eval_every,
                                                            every_steps):
  """The issue's repro (eval_every=0, only the final save) and the periodic case: the run
  ends with exit 0, its checkpoints, and an export; evaluation is skipped with a note."""
  wd = tmp_path / "wd"
  a = [x for x in args(base, wd, 3, "--config.data.heldout_fraction=0.0",
                       f"--config.train.eval_every={eval_every}",
                       f"--config.checkpoint.every_steps={every_steps}",
                       prepared=str(base["root"] / "prepared_noheldout"))
       if x != "--no-export"]
  out = R.run_ok(a, env(base, tmp_path))
  assert "evaluation skipped" in out.stdout, out.stdout[-2000:]
  assert committed_steps(wd) == ([2, 3] if every_steps else [3])
  assert os.path.isfile(wd / "export" / "bundle.json")


@pytest.mark.parametrize("eval_every,every_steps,num_steps,saved", [(0, 0, 3, [3]),
                                                                     (2, 2, 4, [2])])
def test_failing_evaluation_comes_after_the_steps_checkpoint(base, tmp_path, eval_every,
                                                             every_steps, num_steps, saved):
  """An evaluation that raises (here: the held-out split cannot be read) at a step that also
  saves: that step's checkpoint is committed first, so a restart loses nothing."""
  wd = tmp_path / "wd"
  out = R.run(args(base, wd, num_steps, f"--config.train.eval_every={eval_every}",
                   f"--config.checkpoint.every_steps={every_steps}"),
              env(base, tmp_path, {"heldout_error": True}))
  assert out.returncode != 0 and "held-out split cannot be read" in out.stderr
  assert committed_steps(wd) == saved


# ------------------------------------------- 2. structure changes and transient restore errors

@pytest.mark.parametrize("change,needle", [
    ("--config.optim.clip_norm=0.0", "optim.clip_norm: checkpoint 1.0, now 0.0"),
    ("--config.optim.layer_lr_decay=0.5", "optim.layer_lr_decay: checkpoint 1.0, now 0.5"),
])
def test_optimizer_structure_change_is_named_and_nothing_moves(base, two_steps, tmp_path, change,
                                                                needle):
  """clip_norm 1 -> 0 drops a state of the optax chain, layer decay adds a partition: one line
  naming the config field and the state entries, exit 2, the checkpoints byte-identical."""
  before = R.tree_hash(two_steps)
  out = R.run(args(base, two_steps, 6, change), env(base, tmp_path))
  line = R.assert_user_error(out, needle, "opt_state", "does not match")
  assert "checkpoints_corrupt" not in line
  assert R.tree_hash(two_steps) == before
  assert not os.path.exists(two_steps / "checkpoints_corrupt")


@pytest.mark.parametrize("error", ["MemoryError", "EIO"])
def test_transient_restore_error_leaves_the_checkpoint_in_place(base, two_steps, tmp_path, error):
  """A MemoryError or an I/O error (EIO) while Orbax reads a good checkpoint: one line saying
  the checkpoint was left in place, nothing moved; the same command then resumes from it."""
  import shutil
  wd = tmp_path / "wd"
  shutil.copytree(two_steps, wd)
  before = R.tree_hash(wd)
  out = R.run(args(base, wd, 6), env(base, tmp_path, {"restore_error": error}))
  R.assert_user_error(out, "step 4", "left in place")
  assert R.tree_hash(wd) == before
  assert not os.path.exists(wd / "checkpoints_corrupt")
  out = R.run_ok(args(base, wd, 6), env(base, tmp_path))
  assert "resumed from" in out.stdout and "(step 4)" in out.stdout


def test_undecodable_metadata_without_manifest_is_set_aside(base, two_steps, tmp_path):
  """Evidence of corruption without a manifest: a JSON file of the checkpoint that does not
  parse. The step is moved to checkpoints_corrupt/ and the run resumes from the one before."""
  import shutil
  wd = tmp_path / "wd"
  shutil.copytree(two_steps, wd)
  step4 = wd / "checkpoints" / "4"
  os.remove(step4 / "manifest.json")
  (step4 / "meta" / "metadata").write_bytes(b'{"step": 4, "conf')
  out = R.run_ok(args(base, wd, 6), env(base, tmp_path))
  assert "(step 2)" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
  assert len(os.listdir(wd / "checkpoints_corrupt")) == 1


# --------------------------------------------------- corrupt manifest.json of a prepared dir

@pytest.mark.parametrize("content", [b'{"splits": {"train": {"pieces": 3', b'{"splits": 7}',
                                     b'{"splits": {"train": {}}, "fingerprint": {}}'])
def test_corrupt_prepared_manifest_is_one_line(base, tmp_path, content):
  """A prepared dir (data.prepared_dir, reused) whose manifest.json is truncated or holds the
  wrong structure, read by the pipeline: one line naming the file, no traceback."""
  from bertjax.data.pipeline import make_pretrain_iterator
  from bertjax.errors import UserError
  prep = tmp_path / "prep"
  prep.mkdir()
  (prep / "manifest.json").write_bytes(content)
  with pytest.raises(UserError, match="manifest.json"):
    make_pretrain_iterator(str(prep), "train", global_batch_size=8, max_seq_length=32,
                           max_predictions_per_seq=5)


# ------------------------------------------------------------- 4. fine-tuning tokenizer copy

def test_finetune_workdir_copies_the_init_tokenizer(base, tmp_path):
  """A bundle whose tokenizer is a WordPiece vocab.txt (not data.tokenizer's spm.model): the
  fine-tuning workdir's tokenizer/ holds exactly the file whose SHA-256 the checkpoint records."""
  import hashlib

  import jax
  import numpy as np
  from test_reliability_faults import _wordpiece_vocab

  from bertjax.weights import bundle
  from bertjax.config import model_config
  from bertjax.model import BertForPreTraining
  vocab = _wordpiece_vocab(tmp_path / "vocab.txt")
  n_vocab = len(open(vocab).read().split("\n")) - 1
  mcfg = model_config("tiny", vocab_size=n_vocab, max_position_embeddings=64)
  mcfg.hidden_size, mcfg.num_attention_heads, mcfg.intermediate_size = 32, 2, 64
  mcfg.num_hidden_layers = 1
  ids = np.zeros((1, 8), np.int32)
  params = BertForPreTraining(mcfg).init(jax.random.PRNGKey(0), ids, ids, ids + 1,
                                         np.zeros((1, 2), np.int32), deterministic=True)["params"]
  bundle.save_bundle(str(tmp_path / "bundle"), jax.tree.map(np.asarray, params), mcfg, [vocab],
                     meta={"do_lower_case": True})
  data = tmp_path / "sst2"
  data.mkdir()
  rows = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} film number {i}\t{i % 2}"
                                for i in range(16)]
  (data / "train.tsv").write_text("\n".join(rows) + "\n")
  (data / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
  ft = tmp_path / "ft"
  R.run_ok(["finetune", "--task", "sst2", "--data", str(data), "--init", str(tmp_path / "bundle"),
            "--workdir", str(ft), "--no-progress", "--config.train.global_batch_size=8",
            "--config.finetune.num_epochs=1", "--config.finetune.max_seq_length=32",
            "--config.finetune.eval_batch_size=8"], env(base, tmp_path))
  step = committed_steps(ft)[-1]
  meta = json.loads((ft / "checkpoints" / str(step) / "meta" / "metadata").read_text())
  tok = meta["tokenizer"]
  assert tok["file"] == "vocab.txt"
  copied = [ft / rel for rel in tok["files"]]
  assert [p.name for p in copied] == ["vocab.txt"]
  assert hashlib.sha256(copied[0].read_bytes()).hexdigest() == tok["sha256"]
  assert os.listdir(ft / "tokenizer") == [tok["sha256"][:12]]
