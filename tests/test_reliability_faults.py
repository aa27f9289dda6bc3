"""Fault injection against the real `bertjax pretrain` (issue 8): kill -9, SIGTERM inside a
save, a refused write, a corrupted latest checkpoint, NaN losses, mismatched checkpoints, and
no network at run time.

Every run is a subprocess of .venv/bin/bertjax on a tiny model (1 layer, H=32, S=32, batch 8,
1 CPU device) over 28 bundled inaugural addresses. One uninterrupted reference run of N steps
(a checkpoint every 2 steps, all kept) is what every interrupted run must equal, bitwise (f32).
Faults are injected from outside the product code by tests/reliability_util.py (a generated
sitecustomize.py in the child), and a persistent compilation cache shared by the runs of this
module keeps the ~25 process starts affordable. Plain SIGTERM, kill -9 of a tiny save and the
8 -> 2 device resume are in tests/test_resume.py; here are the cases it does not cover.

Budget: ~2-3 min of the suite's ~4 on 2 cores (all slow-marked but the static checks).
"""
import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import reliability_util as R

N = 24  # steps of the reference run


@pytest.fixture(scope="module")
def base(tmp_path_factory):
  """Shared prepared corpus and compilation cache of this module's runs."""
  root = tmp_path_factory.mktemp("rel")
  return {"root": root, "prepared": str(root / "prepared"), "cache": str(root / "jit_cache")}


def env(base, tmp, faults=None, devices=1):
  return R.fault_env(tmp, devices=devices, faults=faults, cache_dir=base["cache"])


def args(base, workdir, num_steps, *extra):
  return R.tiny_pretrain_args(workdir, base["prepared"], num_steps, extra)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
  """The uninterrupted N-step run, under the network guard (security: pretraining and its
  export must not touch the network), exporting a bundle for the fine-tuning check."""
  tmp = tmp_path_factory.mktemp("reference")
  wd = tmp / "wd"
  net_log = tmp / "net.log"
  a = [x for x in args(base, wd, N) if x != "--no-export"]
  out = R.run_ok(a, env(base, tmp, {"deny_network": str(net_log)}))
  assert not net_log.exists(), net_log.read_text()
  steps = sorted(int(n) for n in os.listdir(wd / "checkpoints") if n.isdigit())
  assert steps == list(range(2, N + 1, 2))
  params = {s: R.params_of(wd, s)[0] for s in (4, 8, N)}
  return {"workdir": wd, "params": params, "metrics": R.metrics(wd), "stdout": out.stdout,
          "export": wd / "export"}


def committed_steps(workdir) -> list[int]:
  d = os.path.join(str(workdir), "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def tmp_saves(workdir) -> list[str]:
  d = os.path.join(str(workdir), "checkpoints")
  return [n for n in os.listdir(d) if ".orbax-checkpoint-tmp" in n] if os.path.isdir(d) else []


def resumed_step(stdout: str):
  for ln in stdout.splitlines():
    if "resumed from" in ln:
      return int(ln.rsplit("(step", 1)[1].rstrip(")").strip())
  return None


def all_finite(tree) -> bool:
  import jax
  return all(np.isfinite(x).all() for x in jax.tree.leaves(tree))


# ----------------------------------------------------------------------------- kill -9

@pytest.mark.slow
def test_kill9_at_10_random_moments_resumes_bitwise(base, reference, tmp_path):
  """Protection: atomic Orbax commits (tmp dir + rename), resume from the latest complete
  checkpoint with the data position, state keys derived from the step. 10 kills at seeded
  moments of one run -- a third while training, the others inside a save (in the data item,
  with the state's files being written, or just before the commit) -- then the run is finished:
  its params and metrics.jsonl must equal the uninterrupted run's, bitwise."""
  rng = random.Random(8)
  wd = tmp_path / "wd"
  marker = tmp_path / "saving.txt"
  kinds = ["step", "data", "manifest"]
  log, expect_resume = [], "first run"
  for trial in range(10):
    kind = kinds[trial % 3]
    faults = None
    if kind != "step":  # widen the save window to 0.6 s; the kill lands inside it
      faults = {"save_delay": {"where": kind, "seconds": 0.6, "marker": str(marker)}}
    marker.unlink(missing_ok=True)
    before = R.logged_steps(wd)
    proc = R.popen(args(base, wd, N), env(base, tmp_path, faults))
    try:
      if kind == "step":
        target = rng.randint(1, 4)
        start = len(before)
        R.wait_until(lambda: len(R.logged_steps(wd)) >= start + target or (
            R.logged_steps(wd) and R.logged_steps(wd)[-1] >= N - 1), proc)
        time.sleep(rng.uniform(0.0, 0.1))
      else:  # inside the first or the second save this process makes
        nth = rng.randint(1, 2)
        R.wait_until(lambda: marker.exists() and len(marker.read_text().split()) >= nth, proc)
        time.sleep(rng.uniform(0.05, 0.5))
      in_save = bool(tmp_saves(wd))
      assert proc.poll() is None, "the run ended before the kill: raise N"
      proc.send_signal(signal.SIGKILL)
      out, err = proc.communicate(timeout=60)
    finally:
      if proc.poll() is None:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL
    if expect_resume != "first run":  # it resumed from the newest complete checkpoint the
      assert resumed_step(out) == expect_resume, (out[-1500:], err[-1500:])  # last kill left
    if kind != "step":
      assert in_save, "the kill was meant to land inside a save"
    steps = committed_steps(wd)
    # whatever was in flight never became a step directory; the newest one is readable
    latest = None  # (killed before the first commit: the next run starts afresh)
    if steps:
      _, latest = R.params_of(wd)
      assert latest == steps[-1]
    expect_resume = latest
    log.append((kind, in_save, latest))
  out = R.run_ok(args(base, wd, N), env(base, tmp_path))
  assert resumed_step(out.stdout) == expect_resume
  params, step = R.params_of(wd)
  assert step == N
  R.assert_bitwise(params, reference["params"][N])
  assert R.metrics(wd) == reference["metrics"]
  saves = sum(s for _, s, _ in log)
  print(f"kill -9: {len(log)} kills ({saves} inside a save), resumed from "
        f"{[s for _, _, s in log]}; final params bitwise equal")
  assert len(log) == 10 and saves >= 6


# ----------------------------------------------------------------------- SIGTERM in a save

@pytest.mark.slow
def test_sigterm_inside_a_save_saves_current_step_and_resumes(base, reference, tmp_path):
  """Protection: PreemptionGuard + the trainer's final forced save. SIGTERM lands while a
  checkpoint is being written (the data item is held 1.5 s): the run finishes that save and the
  step, saves the step it stopped at, exits 0; the resumed run equals the reference."""
  wd = tmp_path / "wd"
  marker = tmp_path / "saving.txt"
  faults = {"save_delay": {"where": "data", "seconds": 1.5, "marker": str(marker)}}
  proc = R.popen(args(base, wd, 8), env(base, tmp_path, faults))
  try:
    R.wait_until(lambda: marker.exists() and marker.read_text().strip(), proc)
    assert tmp_saves(wd), "SIGTERM was meant to land inside a save"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, err[-3000:]
  stopped = [ln for ln in out.splitlines() if "SIGTERM: stopping at step" in ln]
  assert stopped, out
  step = int(stopped[0].split("step")[-1].split(";")[0])
  assert 2 <= step < 8 and committed_steps(wd)[-1] == step and not tmp_saves(wd)
  out = R.run_ok(args(base, wd, 8), env(base, tmp_path))
  assert resumed_step(out.stdout) == step
  R.assert_bitwise(R.params_of(wd)[0], reference["params"][8])


# ------------------------------------------------------------------------- refused write

@pytest.mark.slow
def test_refused_write_is_a_clear_error_and_previous_checkpoint_is_used(base, reference,
                                                                         tmp_path):
  """Protection: Checkpointer turns a write the filesystem refuses into one CheckpointWriteError
  line (step, reason, the checkpoint a restart uses); the failed save never commits. The fault
  is real: from the save of step 4 on, RLIMIT_FSIZE makes the kernel refuse writes past 4 KiB
  (EFBIG), as a full disk refuses them (root ignores permissions, not this limit). Orbax logs
  its own tracebacks of the refused write before our line; the last word is ours."""
  wd = tmp_path / "wd"
  out = R.run(args(base, wd, 8), env(base, tmp_path, {"fsize_at_step": [4, 4096]}))
  assert out.returncode == 2, out.stderr[-3000:]
  # (searched, not read line by line: Orbax's threads may still print around our line)
  lines = re.findall(r"bertjax pretrain: error: [^\n]*", out.stderr)
  assert len(lines) == 1, out.stderr[-3000:]
  assert "writing checkpoint step 4 failed (File too large)" in lines[0]
  assert "latest complete checkpoint is step 2" in lines[0]
  assert committed_steps(wd) == [2]
  hashes = R.tree_hash(wd / "checkpoints" / "2")
  out = R.run_ok(args(base, wd, 8), env(base, tmp_path))
  assert resumed_step(out.stdout) == 2
  assert R.tree_hash(wd / "checkpoints" / "2") == hashes        # intact, and used
  assert not tmp_saves(wd)                                        # the failed one is gone
  R.assert_bitwise(R.params_of(wd)[0], reference["params"][8])


# --------------------------------------------------------------------- corrupted latest

@pytest.mark.slow
def test_truncated_latest_falls_back_with_a_warning(base, reference, tmp_path):
  """Protection: the manifest check + fallback in Checkpointer.restore, in the real CLI. The
  latest checkpoint (8) of a copy of the reference has its biggest data file cut in half: the
  run warns, sets it aside, resumes from 6, and reaches step 8 bitwise equal to the reference."""
  wd = tmp_path / "wd"
  shutil.copytree(reference["workdir"], wd, ignore=shutil.ignore_patterns("export"))
  for s in committed_steps(wd):
    if s > 8:
      shutil.rmtree(wd / "checkpoints" / str(s))
  files = [os.path.join(r, f) for r, _, fs in os.walk(wd / "checkpoints" / "8" / "state")
           for f in fs if os.path.basename(r) == "d"]
  victim = max(files, key=os.path.getsize)
  data = open(victim, "rb").read()
  with open(victim, "wb") as f:
    f.write(data[: len(data) // 2])
  out = R.run_ok(args(base, wd, 8), env(base, tmp_path))
  assert "unreadable" in out.stderr and "falling back to step 6" in out.stderr, out.stderr[-2000:]
  assert resumed_step(out.stdout) == 6
  assert os.listdir(wd / "checkpoints_corrupt")
  R.assert_bitwise(R.params_of(wd)[0], reference["params"][8])


# ----------------------------------------------------------------------------- NaN / Inf

@pytest.mark.slow
def test_nan_loss_stops_naming_the_step_and_keeps_finite_latest(base, reference, tmp_path):
  """Protection: the trainer's finite check (train.nan_policy=stop) names the exact step, and
  the checkpoint in flight when it stops still commits (Checkpointer.finish_on_error). The batch
  of step 5 is poisoned; one line, exit 1, latest = step 4 = the reference's step 4."""
  wd = tmp_path / "wd"
  out = R.run(args(base, wd, 8), env(base, tmp_path, {"nan_at_step": 5}))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = R.error_lines(out.stderr)
  assert len(lines) == 1 and "non-finite loss or gradient at step 5" in lines[0], lines
  assert committed_steps(wd) == [2, 4] and not tmp_saves(wd)
  R.assert_bitwise(R.params_of(wd)[0], reference["params"][4])


@pytest.mark.slow
def test_nan_state_is_never_saved_as_latest(base, reference, tmp_path):
  """Protection: Checkpointer.save refuses a state holding NaN. Logging only every 10 steps,
  the trainer's own check comes too late: the save of step 6 after the NaN of step 5 is the
  one that must refuse, naming the step and the latest finite checkpoint (4)."""
  wd = tmp_path / "wd"
  out = R.run(args(base, wd, 8, "--config.train.log_every=10"),
              env(base, tmp_path, {"nan_at_step": 5}))
  assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
  lines = R.error_lines(out.stderr)
  assert len(lines) == 1 and "step 6" in lines[0] and "latest checkpoint stays step 4" in lines[0]
  assert committed_steps(wd) == [2, 4]
  assert all_finite(R.params_of(wd)[0])


@pytest.mark.slow
def test_nan_policy_skip_keeps_weights_and_continues(base, reference, tmp_path):
  """Protection: train.nan_policy=skip keeps the previous params and optimizer moments for a
  non-finite step. Step 5 is poisoned: params after step 5 == the reference's after step 4,
  bitwise; training goes on to step 6 with finite weights."""
  wd = tmp_path / "wd"
  out = R.run_ok(args(base, wd, 6, "--config.train.nan_policy=skip",
                      "--config.checkpoint.every_steps=1"), env(base, tmp_path, {"nan_at_step": 5}))
  assert "skipped 1 update(s) with a non-finite loss or gradient (steps 5)" in out.stdout + out.stderr
  R.assert_bitwise(R.params_of(wd, 5)[0], reference["params"][4])
  p6, _ = R.params_of(wd, 6)
  assert all_finite(p6)
  lines = {r["step"]: r for r in R.metrics(wd) if "loss" in r}  # (not the final eval line)
  skipped = lines[5]["loss"]  # metrics.jsonl writes a non-finite value as null
  assert (skipped is None or not np.isfinite(skipped)) and np.isfinite(lines[6]["loss"])


# ------------------------------------------------------------- mismatched checkpoint

def _wordpiece_vocab(path) -> str:
  """A small uncased WordPiece vocab.txt (specials, characters, frequent corpus words)."""
  import collections
  import glob
  words = collections.Counter()
  for f in sorted(glob.glob(R.CORPUS))[:5]:
    words.update(w.lower() for w in open(f, encoding="utf-8").read().split() if w.isalpha())
  chars = sorted({c for w in words for c in w})
  vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(".,;:!?'\"-()") + chars
           + ["##" + c for c in chars] + [w for w, _ in words.most_common(600)])
  path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
  return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("change", ["tokenizer", "hidden_size", "init_from"])
def test_mismatched_checkpoint_is_refused_before_training(base, reference, tmp_path, change):
  """Protection: Checkpointer.check_compatible (resume) and the --init-from shape check. A
  workdir written with the 8k SentencePiece model and H=32 is resumed with another tokenizer
  (a WordPiece vocab.txt) or H=64, or warm-started into an H=64 model: one line naming what
  differs, exit 2, before any step (no metrics, the checkpoints byte-identical)."""
  wd = tmp_path / "wd"
  shutil.copytree(reference["workdir"], wd, ignore=shutil.ignore_patterns("export"))
  for s in committed_steps(wd):
    if s > 4:
      shutil.rmtree(wd / "checkpoints" / str(s))
  before = R.tree_hash(wd / "checkpoints")
  metrics_before = (wd / "metrics.jsonl").read_bytes()
  if change == "tokenizer":
    vocab = _wordpiece_vocab(tmp_path / "vocab.txt")
    a = args(base, wd, 8, f"--config.data.tokenizer={vocab}",
             f"--config.data.prepared_dir={tmp_path / 'prep_wp'}")
    needles = ["model.vocab_size: checkpoint 8000", "tokenizer", "vocab.txt"]
  elif change == "hidden_size":
    a = args(base, wd, 8, "--config.model.hidden_size=64")
    needles = ["model.hidden_size: checkpoint 32, now 64"]
  else:
    fresh = tmp_path / "fresh"
    a = args(base, fresh, 8, "--config.model.hidden_size=64", "--init-from", str(wd))
    needles = ["--init-from", "shapes differ"]
  out = R.run(a, env(base, tmp_path))
  R.assert_user_error(out, *needles)
  assert R.tree_hash(wd / "checkpoints") == before
  assert (wd / "metrics.jsonl").read_bytes() == metrics_before
  if change == "init_from":
    assert not committed_steps(tmp_path / "fresh")
    assert not R.logged_steps(tmp_path / "fresh")


# ------------------------------------------------------------------------------ security

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "torch",
                     "shelve", "marshal", "urllib", "requests", "http", "httpx", "socket",
                     "huggingface_hub"}


def _calls(tree):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      f = node.func
      name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
      yield name, node


def test_no_pickle_no_code_execution_no_network_in_the_package():
  """Protection: data and checkpoints are read as safetensors / JSON / ArrayRecord / Orbax
  (tensorstore) / npz without pickle, and nothing fetches from the network. Fails if any module
  of bertjax/ imports pickle-like or network modules, calls np.load(allow_pickle=True),
  eval/exec, yaml.load, from_pretrained/hf_hub_download, or a TFDS download=True."""
  pkg = os.path.join(R.REPO, "bertjax")
  bad = []
  for root, _, files in os.walk(pkg):
    for fn in files:
      if not fn.endswith(".py"):
        continue
      path = os.path.join(root, fn)
      rel = os.path.relpath(path, R.REPO)
      tree = ast.parse(open(path, encoding="utf-8").read(), path)
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          bad += [f"{rel}: import {a.name}" for a in node.names
                  if a.name.split(".")[0] in FORBIDDEN_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
          if node.module.split(".")[0] in FORBIDDEN_MODULES:
            bad.append(f"{rel}: from {node.module} import")
      for name, call in _calls(tree):
        kws = {k.arg: k.value for k in call.keywords}
        if name in ("eval", "exec", "from_pretrained", "hf_hub_download", "snapshot_download",
                    "urlopen", "load_pickle"):
          bad.append(f"{rel}:{call.lineno}: {name}()")
        if name == "load" and "allow_pickle" in kws and not (
            isinstance(kws["allow_pickle"], ast.Constant) and kws["allow_pickle"].value is False):
          bad.append(f"{rel}:{call.lineno}: np.load(allow_pickle=...)")
        if name == "load" and isinstance(call.func, ast.Attribute) and getattr(
            call.func.value, "id", "") == "yaml":
          bad.append(f"{rel}:{call.lineno}: yaml.load")
        if "download" in kws and not (isinstance(kws["download"], ast.Constant)
                                      and kws["download"].value is False):
          bad.append(f"{rel}:{call.lineno}: download=...")
  assert not bad, bad


def test_network_guard_catches_a_connection(tmp_path):
  """The guard the run-time checks rely on does catch an outbound connection (so a silent
  pass of the pretrain/fine-tune checks means no connection was tried)."""
  log = tmp_path / "net.log"
  code = ("import urllib.request\ntry:\n  urllib.request.urlopen('http://example.com', "
          "timeout=2)\nexcept OSError as e:\n  print('refused', e)\n")
  env_ = R.fault_env(tmp_path, faults={"deny_network": str(log)})
  out = subprocess.run([sys.executable, "-c", code], env=env_, capture_output=True, text=True,
                       timeout=120)
  assert "refused" in out.stdout, out.stderr[-2000:]
  assert "example.com" in log.read_text()


@pytest.mark.slow
def test_finetune_from_export_makes_no_network_access(base, reference, tmp_path):
  """Protection: --init reads a local bundle (safetensors + JSON + tokenizer file) and nothing
  else. Fine-tune SST-2 for 2 steps from the reference's export under the network guard
  (pretraining itself ran under it in the reference fixture)."""
  data = tmp_path / "sst2"
  data.mkdir()
  rows = ["sentence\tlabel"] + [f"a {'good' if i % 2 else 'bad'} film number {i}\t{i % 2}"
                                for i in range(16)]
  (data / "train.tsv").write_text("\n".join(rows) + "\n")
  (data / "dev.tsv").write_text("\n".join(rows[:9]) + "\n")
  log = tmp_path / "net.log"
  out = R.run_ok(["finetune", "--task", "sst2", "--data", str(data), "--init",
                  str(reference["export"]), "--workdir", str(tmp_path / "ft"), "--no-progress",
                  "--config.train.global_batch_size=8", "--config.finetune.num_epochs=1",
                  "--config.finetune.max_seq_length=32", "--config.finetune.eval_batch_size=8",
                  "--config.checkpoint.async_save=false"],
                 env(base, tmp_path, {"deny_network": str(log)}))
  assert not log.exists(), log.read_text()
  assert json.loads(out.stdout[out.stdout.index("{\n"):])["steps"] == 2


@pytest.mark.slow
def test_pickled_token_tables_are_refused(base, reference, tmp_path):
  """Protection: the prepared corpus's token_tables.npz is read with np.load's default
  allow_pickle=False. A prepared dir whose npz holds a pickled object that would write a file
  when unpickled: the run fails, the file is never written."""
  prep = tmp_path / "prep"
  shutil.copytree(base["prepared"], prep)
  pwned = tmp_path / "pwned"
  bomb = np.empty((), dtype=object)
  bomb[()] = _Bomb(str(pwned))
  np.savez(prep / "token_tables.npz", special=bomb, word_start=bomb, pool=bomb)
  out = R.run(args(base, tmp_path / "wd", 2, f"--config.data.prepared_dir={prep}"),
              env(base, tmp_path))
  assert out.returncode != 0
  assert not pwned.exists()
  assert "allow_pickle" in out.stderr


class _Bomb:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):  # unpickling calls open(path, "w"): the file would appear
    return (open, (self.path, "w"))
