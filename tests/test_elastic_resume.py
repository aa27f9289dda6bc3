"""Exact resume on a different number of processes (issue 16), through `bertjax pretrain` on real
text: a run of 2 processes x 4 CPU devices (gloo over 127.0.0.1) stopped at step N and resumed
on 1 process x 8 devices, and the reverse, continues the same global batches, and its params
after step 2N equal the uninterrupted 1 x 8 run's bitwise (f32). The data position is global
(the example order is keyed on (seed, epoch, example index)); `train.deterministic_reduce` sums
the per-device gradients and metric sums in device order, so the sums do not depend on how
the devices are spread over processes. A changed global batch size is refused in one line.

Tiny model (1 layer, H=32, S=32, batch 8), N=2. Budget: ~1-2 min on 2 cores.
"""
import os
import shutil

import pytest

import reliability_util as R

N = 2
DET = ("--config.train.deterministic_reduce=true", "--config.optim.warmup_steps=1")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  root = tmp_path_factory.mktemp("elastic")
  return {"root": root, "prepared": str(root / "prepared"), "cache": str(root / "jit_cache")}


def env(base, tmp, devices):
  return R.fault_env(tmp, devices=devices, cache_dir=base["cache"])


def args(base, workdir, num_steps, *extra):
  return R.tiny_pretrain_args(workdir, base["prepared"], num_steps, (*DET, *extra))


def train_records(workdir):
  """The training records of metrics.jsonl (a run that ends at step N also logs a final
  evaluation there, which the uninterrupted run does not; evaluation sums are XLA's)."""
  return [r for r in R.metrics(workdir) if "loss" in r]


def steps_of(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(str(workdir), "checkpoints"))
                if n.isdigit())


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
  """The uninterrupted 1 x 8 run of 2N steps (a checkpoint every N)."""
  tmp = tmp_path_factory.mktemp("reference")
  wd = tmp / "wd"
  R.run_ok(args(base, wd, 2 * N), env(base, tmp, 8))
  assert steps_of(wd) == [N, 2 * N]
  return {"workdir": wd, "params": {s: R.params_of(wd, s)[0] for s in (N, 2 * N)},
          "train": train_records(wd)}


@pytest.mark.slow
def test_two_processes_then_one(base, reference, tmp_path):
  wd = tmp_path / "wd"
  outs = R.run_processes_ok(args(base, wd, N), env(base, tmp_path, 4), 2)
  assert "2 processes" in outs[0][1]
  R.assert_bitwise(R.params_of(wd, N)[0], reference["params"][N])
  out = R.run_ok(args(base, wd, 2 * N), env(base, tmp_path, 8))
  assert f"(step {N})" in out.stdout
  R.assert_bitwise(R.params_of(wd, 2 * N)[0], reference["params"][2 * N])
  assert train_records(wd) == reference["train"]  # same batches: same losses, step by step


@pytest.mark.slow
def test_one_process_then_two(base, reference, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(reference["workdir"], wd, ignore=shutil.ignore_patterns("export"))
  shutil.rmtree(wd / "checkpoints" / str(2 * N))
  outs = R.run_processes_ok(args(base, wd, 2 * N), env(base, tmp_path, 4), 2)
  assert f"(step {N})" in outs[0][1]
  R.assert_bitwise(R.params_of(wd, 2 * N)[0], reference["params"][2 * N])
  assert train_records(wd) == reference["train"]


def test_changed_global_batch_size_is_refused(base, reference, tmp_path):
  wd = tmp_path / "wd"
  shutil.copytree(reference["workdir"], wd, ignore=shutil.ignore_patterns("export"))
  before = R.tree_hash(wd / "checkpoints")
  out = R.run(args(base, wd, 3 * N, "--config.train.global_batch_size=16"), env(base, tmp_path, 8))
  R.assert_user_error(out, "train.global_batch_size: checkpoint 8, now 16")
  assert R.tree_hash(wd / "checkpoints") == before
