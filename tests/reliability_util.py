"""Helpers of the reliability suite (tests/test_reliability_faults.py, tests/test_bad_inputs.py).

Two halves:
  * the parent side: the tiny `bertjax pretrain` command line, subprocess environments,
    running the real CLI, hashing a directory tree, asserting a clean one-line user error;
  * the child side: fault injection inside a real `bertjax pretrain` / `bertjax finetune`
    process, switched on by the BERTJAX_FAULTS environment variable (JSON) and installed by a
    generated `sitecustomize.py` (see `fault_env`), so the product code carries no test hooks.

Faults (keys of BERTJAX_FAULTS):
  save_delay   {"where": "data"|"manifest", "seconds": s, "marker": path}: before writing the
               data-iterator item of a checkpoint (mid-save: the state's files are being
               written) or its manifest (every item written, not yet committed), append the
               directory to `marker` and sleep, so a parent can kill the process inside a save.
  fsize_at_step [step, bytes]: from the save of `step` on, RLIMIT_FSIZE = bytes: the kernel
               refuses any write past that size (EFBIG), as a full disk refuses writes; root
               ignores file permissions, not this limit.
  nan_at_step  s: the training batch of step s (counted from a fresh start) gets NaN
               masked_lm_weights, so that step's loss and gradients are NaN.
  heldout_error true: reading the held-out split raises RuntimeError (an evaluation that fails).
  restore_error "MemoryError"|"EIO": every Orbax restore raises MemoryError, or OSError(EIO) as
               a failing disk or network filesystem does (the files themselves are intact).
  deny_network path: any connect() / DNS lookup of a non-loopback address is appended to
               `path` and refused with OSError.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
BERTJAX = os.path.join(os.path.dirname(sys.executable), "bertjax")  # .venv/bin/bertjax
SPM = os.path.join(REPO, "data", "tokenizer", "spm.model")
CORPUS = os.path.join(REPO, "data", "corpus", "inaugural_18*.txt")  # 28 files, 0.4 MB
WALL_CLOCK = {"seq_per_s", "tokens_per_s", "mfu"}


# ----------------------------------------------------------------------------- parent side

def tiny_pretrain_args(workdir, prepared, num_steps: int, extra=()) -> list[str]:
  """`bertjax pretrain` on a 1-layer H=32 model, S=32, batch 8, a checkpoint every 2 steps.

  The learning rate is warmup-then-constant (end = peak), so a run stopped by
  train.num_steps=k is exactly the first k steps of a longer run."""
  return [
      "pretrain", "--workdir", str(workdir), "--no-progress", "--no-export",
      "--config", os.path.join(REPO, "configs", "pretrain_bert2018.py"),
      f"--config.data.corpus={CORPUS}", f"--config.data.tokenizer={SPM}",
      f"--config.data.prepared_dir={prepared}",
      "--config.model.hidden_size=32", "--config.model.intermediate_size=64",
      "--config.model.num_hidden_layers=1", "--config.model.num_attention_heads=2",
      "--config.model.max_position_embeddings=64",
      "--config.data.max_seq_length=32", "--config.data.max_predictions_per_seq=5",
      "--config.train.global_batch_size=8", "--config.train.phase2_start=0",
      "--config.train.log_every=1", "--config.train.eval_every=0",
      "--config.train.eval_batches=1",
      "--config.checkpoint.every_steps=2", "--config.checkpoint.keep=20",
      "--config.optim.warmup_steps=3", "--config.optim.learning_rate=1e-3",
      "--config.optim.end_learning_rate=1e-3",
      f"--config.train.num_steps={num_steps}", *extra,
  ]


def fault_env(tmp_dir, devices: int = 1, faults: dict | None = None,
              cache_dir: str | None = None) -> dict:
  """Environment of a child `bertjax` process: CPU, `devices` virtual devices, offline, and
  the given faults (a sitecustomize.py in `tmp_dir`/hooks installs them)."""
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["HF_HUB_OFFLINE"] = env["TRANSFORMERS_OFFLINE"] = "1"
  env["PYTHONUNBUFFERED"] = "1"
  path = [REPO]
  if cache_dir:  # compile each program once for all the short runs of a test
    env["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir)
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  if faults:
    hooks = os.path.join(str(tmp_dir), "hooks")
    os.makedirs(hooks, exist_ok=True)
    with open(os.path.join(hooks, "sitecustomize.py"), "w") as f:
      f.write(f"import sys\nsys.path.insert(0, {TESTS!r})\n"
              "import reliability_util\nreliability_util.install_faults()\n")
    path = [hooks, TESTS] + path
    env["BERTJAX_FAULTS"] = json.dumps(faults)
  else:
    env.pop("BERTJAX_FAULTS", None)
  env["PYTHONPATH"] = os.pathsep.join(path + [p for p in [env.get("PYTHONPATH")] if p])
  return env


def popen(args: list[str], env: dict, **kw) -> subprocess.Popen:
  return subprocess.Popen([BERTJAX, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kw)


def run(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
  return subprocess.run([BERTJAX, *args], cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=timeout)


def run_ok(args: list[str], env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
  out = run(args, env, timeout)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
  return out


def free_port() -> int:
  import socket
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(args: list[str], env: dict, n: int, timeout: float = 300) -> list[tuple]:
  """The same `bertjax` command as `n` processes joined over 127.0.0.1 (gloo); each gets
  --coordinator/--num-processes/--process-id. Returns [(returncode, stdout, stderr)].

  Without the persistent compilation cache: a process that finds its program cached would
  reach the first collective long before one that compiles, and gloo gives up after 30 s."""
  env = {k: v for k, v in env.items() if not k.startswith("JAX_COMPILATION_CACHE")}
  port = free_port()
  procs = [popen([*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n),
                  "--process-id", str(i)], env) for i in range(n)]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=timeout)
      outs.append((p.returncode, out, err))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  return outs


def run_processes_ok(args: list[str], env: dict, n: int, timeout: float = 300) -> list[tuple]:
  outs = run_processes(args, env, n, timeout)
  for i, (rc, out, err) in enumerate(outs):
    assert rc == 0, f"process {i}: rc={rc}\n{out[-2000:]}\n{err[-4000:]}"
  return outs


def error_lines(stderr: str) -> list[str]:
  """The `bertjax <cmd>: error: ...` lines of a child's stderr."""
  return [ln for ln in stderr.splitlines() if ln.startswith("bertjax") and ": error: " in ln]


def assert_user_error(out: subprocess.CompletedProcess, *needles: str) -> str:
  """Exit 2, no traceback, exactly one `bertjax CMD: error:` line holding every needle."""
  err = out.stderr
  assert "Traceback" not in err, err[-4000:]
  assert out.returncode == 2, f"rc={out.returncode}\n{out.stdout[-1000:]}\n{err[-3000:]}"
  lines = error_lines(err)
  assert len(lines) == 1, err[-3000:]
  for n in needles:
    assert n in lines[0], f"{n!r} not in: {lines[0]}"
  return lines[0]


def tree_hash(root) -> dict:
  """{relative path: sha256} of every file under root (what 'untouched' compares)."""
  out = {}
  for dirpath, _, names in os.walk(str(root)):
    for n in names:
      p = os.path.join(dirpath, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, str(root))] = hashlib.sha256(f.read()).hexdigest()
  return out


def metrics(workdir) -> list[dict]:
  """metrics.jsonl without its wall-clock fields (those differ between runs)."""
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(ln).items() if k not in WALL_CLOCK}
            for ln in f if ln.strip()]


def logged_steps(workdir) -> list[int]:
  path = os.path.join(str(workdir), "metrics.jsonl")
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(ln)["step"] for ln in f if ln.strip().endswith("}")]


def wait_until(cond, proc: subprocess.Popen, timeout: float = 240, poll: float = 0.005):
  """Poll `cond()` until truthy (returned) or the process ends (None)."""
  t0 = time.time()
  while time.time() - t0 < timeout:
    v = cond()
    if v:
      return v
    if proc.poll() is not None:
      return cond() or None
    time.sleep(poll)
  raise TimeoutError("condition not reached")


def params_of(workdir, step=None):
  """(numpy params, step) of a checkpoint of a workdir."""
  import jax
  import numpy as np
  from bertjax import checkpoint as ck
  params, _, got = ck.restore_params(str(workdir), step=step)
  return jax.tree.map(np.asarray, params), got


def assert_bitwise(a, b) -> None:
  import jax
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape, jax.tree_util.keystr(path)
    assert x.tobytes() == y.tobytes(), jax.tree_util.keystr(path)


# ------------------------------------------------------------------------------ child side

def install_faults() -> None:
  """Install the faults of BERTJAX_FAULTS in this (child) process; see the module docstring."""
  spec = os.environ.get("BERTJAX_FAULTS")
  if not spec:
    return
  faults = json.loads(spec)
  if "deny_network" in faults:
    _deny_network(faults["deny_network"])
  if "save_delay" in faults:
    _save_delay(**faults["save_delay"])
  if "fsize_at_step" in faults:
    _fsize_at_step(*faults["fsize_at_step"])
  if "nan_at_step" in faults:
    _nan_at_step(int(faults["nan_at_step"]))
  if faults.get("heldout_error"):
    _heldout_error()
  if "restore_error" in faults:
    _restore_error(faults["restore_error"])


def _save_delay(where: str, seconds: float, marker: str) -> None:
  from bertjax import checkpoint as ck

  def note(what):
    with open(marker, "a") as f:
      f.write(f"{what}\n")
    time.sleep(seconds)

  if where == "data":
    orig_save = ck.DataStateHandler.save

    def save(self, directory, args):
      note(directory)
      return orig_save(self, directory, args)
    ck.DataStateHandler.save = save
  else:
    from bertjax.checkpoint import checkpointer  # calls write_manifest from its commit hook
    orig_manifest = checkpointer.write_manifest

    def write_manifest(step_dir):
      note(step_dir)
      return orig_manifest(step_dir)
    checkpointer.write_manifest = write_manifest


def _heldout_error() -> None:
  from bertjax.data import pipeline
  orig = pipeline.make_pretrain_iterator

  def make(prepared_dir, split, **kw):
    if split == "heldout":
      raise RuntimeError("reliability suite: the held-out split cannot be read")
    return orig(prepared_dir, split, **kw)
  pipeline.make_pretrain_iterator = make


def _restore_error(kind: str) -> None:
  import errno

  import orbax.checkpoint as ocp

  def restore(self, *a, **kw):
    if kind == "MemoryError":
      raise MemoryError("reliability suite: restore ran out of memory")
    raise OSError(errno.EIO, "reliability suite: Input/output error")
  ocp.CheckpointManager.restore = restore


def _fsize_at_step(step: int, limit: int) -> None:
  import resource
  from bertjax import checkpoint as ck
  orig = ck.Checkpointer.save

  def save(self, s, *a, **kw):
    if int(s) >= step:
      self.wait()  # the previous checkpoint commits under the normal limit
      soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
      resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    return orig(self, s, *a, **kw)
  ck.Checkpointer.save = save


class _NanAt:
  """Wraps the training iterator: batch index `at` (0-based) gets NaN masked_lm_weights."""

  def __init__(self, it, at: int):
    self.it, self.at, self.n = it, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    import numpy as np
    batch = next(self.it)
    if self.n == self.at:
      batch = dict(batch, masked_lm_weights=np.full_like(batch["masked_lm_weights"], np.nan))
    self.n += 1
    return batch

  def get_state(self):
    return self.it.get_state()

  def set_state(self, state):
    self.it.set_state(state)


def _nan_at_step(step: int) -> None:
  from bertjax.data import pipeline
  orig = pipeline.make_pretrain_iterator

  def make(prepared_dir, split, **kw):
    it = orig(prepared_dir, split, **kw)
    return _NanAt(it, step - 1) if split == "train" else it
  pipeline.make_pretrain_iterator = make


def _is_loopback(host) -> bool:
  if host is None:
    return True
  host = host.decode() if isinstance(host, bytes) else str(host)
  return host in ("localhost", "", "0.0.0.0", "::", "::1") or host.startswith("127.")


def _deny_network(log_path: str) -> None:
  import socket

  def refuse(what):
    with open(log_path, "a") as f:
      f.write(f"{what}\n")
    raise OSError(f"reliability suite: network access refused ({what})")

  orig_connect, orig_connect_ex = socket.socket.connect, socket.socket.connect_ex
  orig_getaddrinfo = socket.getaddrinfo

  def check(sock, address):
    if sock.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
      refuse(f"connect {address!r}")

  def connect(self, address):
    check(self, address)
    return orig_connect(self, address)

  def connect_ex(self, address):
    check(self, address)
    return orig_connect_ex(self, address)

  def getaddrinfo(host, *a, **kw):
    if not _is_loopback(host):
      refuse(f"getaddrinfo {host!r}")
    return orig_getaddrinfo(host, *a, **kw)

  socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
  socket.getaddrinfo = getaddrinfo


class SignalAt:
  """Wraps an iterator; sends SIGTERM to this process when batch `k` is drawn."""

  def __init__(self, it, k):
    self.it, self.k, self.n = it, k, 0

  def __next__(self):
    self.n += 1
    if self.n == self.k:
      os.kill(os.getpid(), signal.SIGTERM)
    return next(self.it)

  def get_state(self):
    return self.it.get_state()

  def set_state(self, s):
    self.it.set_state(s)
