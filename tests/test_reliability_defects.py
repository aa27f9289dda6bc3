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
