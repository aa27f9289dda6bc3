"""End-to-end resume with the real `bertjax pretrain` (subprocesses on a tiny config).

Every interrupted run is compared with one uninterrupted reference run of the same config:
final params and every metrics.jsonl line (minus wall-clock fields) must be bitwise equal.
The learning-rate schedule is warmup-then-constant (end_learning_rate = learning_rate), so a run
stopped by `train.num_steps=k` is exactly the first k steps of the N-step run.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from bertjax import checkpoint as ck

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N = 16
WALL_CLOCK = {"seq_per_s", "tokens_per_s", "mfu"}


def tiny_args(prepared: str) -> list[str]:
  return [
      "--config", os.path.join(REPO, "configs", "pretrain_bert2018.py"), "--no-progress",
      "--no-export",
      f"--config.data.corpus={REPO}/data/corpus/inaugural_18*.txt",
      f"--config.data.tokenizer={REPO}/data/tokenizer/spm.model",
      f"--config.data.prepared_dir={prepared}",
      "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
      "--config.model.num_hidden_layers=1", "--config.model.num_attention_heads=2",
      "--config.model.max_position_embeddings=64",
      "--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
      "--config.train.global_batch_size=8", "--config.train.phase2_start=0",
      "--config.train.log_every=1", "--config.train.eval_every=4",
      "--config.train.eval_batches=2",
      "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=3",
      "--config.optim.warmup_steps=5", "--config.optim.learning_rate=1e-3",
      "--config.optim.end_learning_rate=1e-3",
  ]


def pretrain_cmd(workdir, prepared, num_steps, extra=()):
  return ([sys.executable, "-m", "bertjax.cli", "pretrain", "--workdir", str(workdir)]
          + tiny_args(prepared) + [f"--config.train.num_steps={num_steps}", *extra])


def env_with(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
  return env


def run_pretrain(workdir, prepared, num_steps, devices=1, extra=()):
  out = subprocess.run(pretrain_cmd(workdir, prepared, num_steps, extra), cwd=REPO,
                       env=env_with(devices), capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  return out


def metrics(workdir) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(ln).items() if k not in WALL_CLOCK}
            for ln in f if ln.strip()]


def final_params(workdir, step=N):
  params, _, got = ck.restore_params(str(workdir), step=step)
  assert got == step
  return jax.tree.map(np.asarray, params)


def assert_same_params(a, b, rtol=0.0, atol=0.0):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    if rtol == 0.0 and atol == 0.0:
      assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)
    else:
      np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  return str(tmp_path_factory.mktemp("prepared"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, prepared):
  """The uninterrupted N-step run every other run is compared with."""
  wd = tmp_path_factory.mktemp("reference")
  run_pretrain(wd, prepared, N)
  lines = metrics(wd)
  assert [r["step"] for r in lines] == list(range(1, N + 1))
  return {"workdir": wd, "params": final_params(wd), "metrics": lines}


def test_exact_resume_bitwise(tmp_path, prepared, reference):
  wd = tmp_path / "wd"
  run_pretrain(wd, prepared, 8)                       # stop after 8 steps ...
  assert ck.restore_params(str(wd))[2] == 8
  # ... and resume to N. Resume order: the workdir's own checkpoint wins over --init-from
  # (here another run's final params, which would change every later number).
  out = run_pretrain(wd, prepared, N, extra=["--init-from", str(reference["workdir"])])
  assert "resumed from" in out.stdout and "(step 8)" in out.stdout
  assert_same_params(final_params(wd), reference["params"])
  assert metrics(wd) == reference["metrics"]          # losses, accuracies, lr, grad norm


def test_export_bundle_and_hf(tmp_path, reference):
  from bertjax.weights import bundle, interop
  from bertjax.cli.export import export_main
  wd = str(reference["workdir"])
  assert export_main([wd, str(tmp_path / "b")]) == 0
  params, model_cfg, tok, meta = bundle.load_bundle(str(tmp_path / "b"))
  assert meta["step"] == N and model_cfg.hidden_size == 32 and tok.endswith("spm.model")
  assert_same_params(jax.tree.map(np.asarray, params), reference["params"])
  assert export_main([wd, str(tmp_path / "hf"), "--format", "hf", "--step", str(N - 2)]) == 0
  hf_params, hf_cfg, _ = interop.load_hf(str(tmp_path / "hf"))
  assert hf_cfg.num_hidden_layers == 1
  np.testing.assert_array_equal(
      np.asarray(hf_params["bert"]["embeddings"]["word_embeddings"]),
      final_params(wd, N - 2)["bert"]["embeddings"]["word_embeddings"])


def _wait_for_step(workdir, proc, at_least, timeout=240):
  """Poll metrics.jsonl until it logs step >= at_least (or the process ends)."""
  path = os.path.join(workdir, "metrics.jsonl")
  t0 = time.time()
  while time.time() - t0 < timeout:
    if proc.poll() is not None:
      return None
    if os.path.isfile(path):
      with open(path) as f:
        steps = [json.loads(ln)["step"] for ln in f if ln.strip().endswith("}")]
      if steps and steps[-1] >= at_least:
        return steps[-1]
    time.sleep(0.01)
  raise TimeoutError(f"no step {at_least} in {path}")


@pytest.mark.slow
def test_sigterm_saves_current_step_and_resumes(tmp_path, prepared, reference):
  wd = tmp_path / "wd"
  proc = subprocess.Popen(pretrain_cmd(wd, prepared, N), cwd=REPO, env=env_with(1),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  seen = _wait_for_step(wd, proc, 3)
  assert seen is not None, "the run ended before it could be signalled"
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  stopped = [ln for ln in out.splitlines() if "SIGTERM: stopping at step" in ln]
  assert stopped, out
  step = int(stopped[0].split("step")[-1].split(";")[0])
  assert seen <= step < N
  assert ck.restore_params(str(wd))[2] == step    # a checkpoint at the step it stopped
  out = run_pretrain(wd, prepared, N)
  assert f"(step {step})" in out.stdout
  assert_same_params(final_params(wd), reference["params"])
  assert metrics(wd) == reference["metrics"]


@pytest.mark.slow
def test_kill9_at_random_moments_always_resumes(tmp_path, prepared, reference):
  """kill -9 at random moments of one run, over and over; each time the latest checkpoint is
  readable, and the run finally finishes exactly as the uninterrupted one."""
  rng = random.Random(0)
  wd = tmp_path / "wd"
  during_save, kills, seen, restored = 0, 0, 0, []
  for trial in range(5):
    proc = subprocess.Popen(pretrain_cmd(wd, prepared, N), cwd=REPO, env=env_with(1),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    # wait until this run has trained past the last kill, then kill at a random moment
    seen = _wait_for_step(wd, proc, seen + rng.randint(1, 3))
    if seen is None:  # finished before we could kill it
      break
    time.sleep(rng.uniform(0.0, 0.15))
    ckdir = wd / "checkpoints"
    in_flight = [n for n in os.listdir(ckdir) if ".orbax-checkpoint-tmp" in n]
    if proc.poll() is not None:  # it finished in the meantime: not a kill
      break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
    during_save += bool(in_flight)
    if any(n.isdigit() for n in os.listdir(ckdir)):  # a committed step is always readable
      params, _, last = ck.restore_params(str(wd))
      assert jax.tree.leaves(params)
      restored.append(last)
  assert kills >= 3, "the runs finished before enough kills"
  run_pretrain(wd, prepared, N)
  assert_same_params(final_params(wd), reference["params"])
  assert metrics(wd) == reference["metrics"]
  assert restored, "no kill came after a checkpoint"
  print(f"kill -9: {kills} kills (latest readable steps {restored}), {during_save} while a "
        f"save was in flight; resumed bitwise equal")


@pytest.mark.slow
def test_resume_on_fewer_devices(tmp_path, prepared, reference):
  """8 devices for the first half, 2 for the second: equal to the 1-device run within float
  tolerance (the reduction order over devices differs)."""
  wd = tmp_path / "wd"
  out = run_pretrain(wd, prepared, 8, devices=8)
  assert "8 devices" in out.stdout
  out = run_pretrain(wd, prepared, N, devices=2)
  assert "(step 8)" in out.stdout and "2 devices" in out.stdout
  assert_same_params(final_params(wd), reference["params"], rtol=1e-4, atol=1e-5)
  got, want = metrics(wd), reference["metrics"]
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for g, w in zip(got, want):
    np.testing.assert_allclose(g["loss"], w["loss"], rtol=1e-4)
