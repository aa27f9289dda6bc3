"""Checkpointer unit tests: a toy train state and a real grain iterator (bertjax/checkpoint/)."""
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from bertjax import checkpoint as ck
from bertjax.config import base_config, resume_values
from bertjax.data.tokenizer import checkpoint_tokenizer
from bertjax.errors import UserError
from bertjax.train.preemption import PreemptionGuard

P = jax.sharding.PartitionSpec
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(seed=0):
  """params + adam state + step + raw rng key, as bertjax.train.state.TrainState holds them."""
  k = jax.random.PRNGKey(seed)
  params = {"dense": {"kernel": jax.random.normal(k, (16, 8)), "bias": jnp.zeros((8,))},
            "emb": jax.random.normal(jax.random.fold_in(k, 1), (32, 16))}
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)  # non-trivial mu/nu/count
  return {"params": params, "opt_state": opt_state, "step": jnp.int32(7),
          "rng": jax.random.fold_in(k, 2)}


def abstract_of(state, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def make_iter(seed=3):
  return iter(grain.MapDataset.range(100).shuffle(seed=seed).batch(4).to_iter_dataset())


def assert_bitwise(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def single():
  return jax.sharding.SingleDeviceSharding(jax.devices()[0])


def test_save_restore_bitwise_with_data_position(tmp_path):
  state = make_state()
  it = make_iter()
  for _ in range(5):
    next(it)
  with ck.Checkpointer(tmp_path, every_steps=10, keep=3) as c:
    assert not c.should_save(5) and c.should_save(10) and not c.should_save(0)
    assert c.save(10, state, it)
    c.wait()
    assert not c.save(10, state, it, force=True)  # same step twice: skipped
    expected_next = [next(it) for _ in range(3)]
  it2 = make_iter()
  with ck.Checkpointer(tmp_path, every_steps=10, keep=3) as c:
    assert c.latest_step() == 10
    restored, step = c.restore(abstract_of(state, single()), it2)
  assert step == 10
  assert_bitwise(restored, state)
  for want in expected_next:  # the iterator continues exactly where it was saved
    np.testing.assert_array_equal(next(it2), want)


def test_async_save_returns_before_commit(tmp_path):
  """save() returns while the write is still in flight; wait() makes it visible."""
  gate = threading.Event()

  class Slow(ck.Checkpointer):
    def _on_written(self):  # runs in Orbax's writer thread, before the commit rename
      assert gate.wait(30)
      super()._on_written()

  c = Slow(tmp_path, every_steps=1, keep=2)
  state = make_state()
  c.save(1, state, None)
  # Returned, but not committed: no final step dir, and a reader (as `bertjax export` while
  # training runs) finds no complete checkpoint -- and leaves the in-flight tmp dir alone.
  assert not os.path.isdir(os.path.join(tmp_path, "checkpoints", "1"))
  with pytest.raises(UserError, match="no complete checkpoint"):
    ck.restore_params(str(tmp_path))
  gate.set()
  c.wait()
  assert os.path.isfile(os.path.join(tmp_path, "checkpoints", "1", ck.MANIFEST))
  restored, step = c.restore(abstract_of(state, single()))
  assert step == 1
  assert_bitwise(restored, state)
  c.close()


def test_keep_last_k_and_best(tmp_path):
  state = make_state()
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    for s in range(1, 6):
      c.save(s, state, None)
    c.wait()
    assert c.all_steps() == [4, 5]
  losses = {1: 3.0, 2: 1.0, 3: 2.0, 4: 2.5, 5: 2.7}
  with ck.Checkpointer(tmp_path / "b", every_steps=1, keep=2, best_metric="eval_mlm_loss") as c:
    for s, loss in losses.items():
      c.save(s, state, None, metrics={"eval_mlm_loss": loss})
    c.wait()
    assert c.all_steps() == [2, 4, 5]  # the last two and the lowest loss


def test_sync_save_is_committed_on_return(tmp_path):
  c = ck.Checkpointer(tmp_path, every_steps=1, keep=2, async_save=False)
  c.save(1, make_state(), None)
  assert os.path.isfile(os.path.join(tmp_path, "checkpoints", "1", ck.MANIFEST))
  c.close()


KILL_SCRIPT = textwrap.dedent("""
  import os, sys, time
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, {repo!r})
  import jax, jax.numpy as jnp
  from bertjax import checkpoint as ck
  class Hang(ck.Checkpointer):
    def _on_written(self):
      if self._pending_step == 2:
        print("WRITING", flush=True)
        time.sleep(600)   # killed here: files written, commit not done
      super()._on_written()
  c = Hang(sys.argv[1], every_steps=1, keep=3)
  big = {{"params": {{"w": jnp.ones((256, 1024))}}, "step": jnp.int32(0)}}
  c.save(1, big, None); c.wait()
  c.save(2, jax.tree.map(lambda x: x + 1, big), None)
  time.sleep(600)
""")


def test_kill_during_save_never_becomes_latest(tmp_path):
  script = tmp_path / "kill.py"
  script.write_text(KILL_SCRIPT.format(repo=REPO))
  wd = tmp_path / "wd"
  proc = subprocess.Popen([sys.executable, str(script), str(wd)], stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline().strip() == "WRITING"
    tmp_dirs = [n for n in os.listdir(wd / "checkpoints") if ".orbax-checkpoint-tmp" in n]
    assert tmp_dirs, "the interrupted save should be in a tmp dir"
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  with ck.Checkpointer(wd, every_steps=1, keep=3) as c:
    assert c.latest_step() == 1
    state = {"params": {"w": jnp.zeros((256, 1024))}, "step": jnp.int32(0)}
    restored, step = c.restore(abstract_of(state, single()))
    assert step == 1 and float(restored["params"]["w"][0, 0]) == 1.0
    # the leftover tmp dir is cleaned up, and the next save of step 2 succeeds
    assert not [n for n in os.listdir(wd / "checkpoints") if ".orbax-checkpoint-tmp" in n]
    assert c.save(2, restored, None)
    c.wait()
    assert c.all_steps() == [1, 2]


def _two_checkpoints(path):
  state = make_state()
  c = ck.Checkpointer(path, every_steps=1, keep=3)
  c.save(1, state, None)
  c.save(2, jax.tree.map(lambda x: x, state), None)
  c.wait()
  return c, state


def _largest_data_file(step_dir):
  """The biggest array-data file of the state (OCDBT's d/ dir), not its JSON metadata."""
  files = [os.path.join(r, f) for r, _, fs in os.walk(os.path.join(step_dir, "state"))
           for f in fs if os.path.basename(r) == "d"]
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "truncate_no_manifest"])
def test_corrupt_latest_falls_back_with_warning(tmp_path, caplog, damage):
  c, state = _two_checkpoints(tmp_path)
  step2 = os.path.join(tmp_path, "checkpoints", "2")
  victim = _largest_data_file(step2)
  data = open(victim, "rb").read()
  if damage == "bitflip":  # Orbax alone would restore this silently with wrong values
    i = len(data) // 3
    data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
  else:
    data = data[: len(data) // 2]
  if damage == "truncate_no_manifest":  # second line of defence: the restore itself fails
    os.remove(os.path.join(step2, ck.MANIFEST))
  with open(victim, "wb") as f:
    f.write(data)
  with caplog.at_level(logging.WARNING, logger="bertjax.checkpoint"):
    restored, step = c.restore(abstract_of(state, single()))
  assert step == 1
  assert_bitwise(restored, state)
  assert any("unreadable" in r.message and "falling back to step 1" in r.message
             for r in caplog.records)
  # set aside, so the next save of step 2 is possible and no later run trips on it again
  assert c.all_steps() == [1]
  assert os.listdir(os.path.join(tmp_path, ck.CORRUPT_DIR))
  assert c.save(2, restored, None)
  c.close()


def _run_checkpointer(workdir, cfg):
  """A Checkpointer with what the trainer hands it: the config, its resume values, the tokenizer."""
  identity, files = checkpoint_tokenizer(cfg.data.tokenizer)
  return ck.Checkpointer(workdir, every_steps=1, keep=2, config=cfg,
                         resume_values=resume_values(cfg), tokenizer_identity=identity,
                         tokenizer_files=files)


def test_config_and_tokenizer_mismatch_named(tmp_path):
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n")
  cfg = base_config()
  cfg.data.tokenizer = str(vocab)
  state = make_state()
  with _run_checkpointer(tmp_path / "wd", cfg) as c:
    c.save(1, state, None)
  # the tokenizer was copied into the workdir, by hash
  copied = [os.path.join(r, f) for r, _, fs in os.walk(tmp_path / "wd" / ck.TOKENIZER_DIR)
            for f in fs]
  assert [open(p).read() for p in copied] == [vocab.read_text()]
  # same config: fine; num_steps / lr may change
  cfg.train.num_steps = 5000
  cfg.optim.learning_rate = 3e-4
  with _run_checkpointer(tmp_path / "wd", cfg) as c:
    c.restore(abstract_of(state, single()))
  cfg.model.hidden_size = 512
  cfg.data.max_seq_length = 64
  vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nworld\n")
  with _run_checkpointer(tmp_path / "wd", cfg) as c:
    with pytest.raises(UserError) as e:
      c.restore(abstract_of(state, single()))
  msg = str(e.value)
  assert "model.hidden_size: checkpoint 256, now 512" in msg
  assert "data.max_seq_length: checkpoint 128, now 64" in msg
  assert "tokenizer sha256" in msg and "--init-from" in msg
  assert "num_steps" not in msg and "learning_rate" not in msg


def _sharded_state(mesh):
  state = make_state()
  row = jax.sharding.NamedSharding(mesh, P("data"))
  rep = jax.sharding.NamedSharding(mesh, P())
  # shard the leading dim of 2-D leaves over 'data' (as an fsdp layout would), replicate the rest
  return jax.tree.map(lambda x: jax.device_put(x, row if x.ndim == 2 else rep), state)


def test_restore_onto_fewer_devices(tmp_path):
  assert jax.device_count() == 8
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  state = _sharded_state(mesh8)
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    c.save(3, state, None)
  mesh2 = jax.sharding.Mesh(np.array(jax.devices()[4:6]), ("data",))
  for sharding in (jax.sharding.NamedSharding(mesh2, P()), single()):
    with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
      restored, _ = c.restore(abstract_of(state, sharding))
    assert_bitwise(restored, state)
    leaf = restored["params"]["emb"]
    assert leaf.sharding == sharding


RESTORE_SCRIPT = textwrap.dedent("""
  import os, sys
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=" + sys.argv[2]
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, {repo!r})
  import jax, numpy as np
  sys.path.insert(0, {tests!r})
  from bertjax import checkpoint as ck
  import test_checkpoint as t
  assert jax.device_count() == int(sys.argv[2])
  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  state = t._sharded_state(mesh)  # same values, this process's mesh
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          state)
  with ck.Checkpointer(sys.argv[1], every_steps=1, keep=2) as c:
    restored, step = c.restore(abstract)
  t.assert_bitwise(restored, state)
  print("OK", step, restored["params"]["emb"].sharding.mesh.shape["data"])
""")


def test_restore_in_processes_with_2_and_1_devices(tmp_path):
  mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  with ck.Checkpointer(tmp_path / "wd", every_steps=1, keep=2) as c:
    c.save(4, _sharded_state(mesh8), None)
  tmp_script = tmp_path / "restore.py"
  tmp_script.write_text(RESTORE_SCRIPT.format(repo=REPO, tests=os.path.join(REPO, "tests")))
  for n in ("2", "1"):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, str(tmp_script), str(tmp_path / "wd"), n],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-3:] == ["OK", "4", n]


def test_data_state_from_other_process_count_is_a_user_error(tmp_path):
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    c.save(1, make_state(), make_iter())
  d = os.path.join(tmp_path, "checkpoints", "1", "data")
  os.rename(os.path.join(d, "process_0-of-1.json"), os.path.join(d, "process_0-of-2.json"))
  os.remove(os.path.join(tmp_path, "checkpoints", "1", ck.MANIFEST))
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    with pytest.raises(UserError, match="same number of processes"):
      c.restore(abstract_of(make_state(), single()), make_iter(), step=1)


def test_restore_params_without_optimizer(tmp_path):
  state = make_state()
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    c.save(1, state, None)
    c.save(2, jax.tree.map(lambda x: x * 2 if x.dtype == jnp.float32 else x, state), None)
  params, meta, step = ck.restore_params(str(tmp_path))
  assert step == 2 and meta["step"] == 2
  assert_bitwise(params, jax.tree.map(lambda x: x * 2, state["params"]))
  params, _, step = ck.restore_params(str(tmp_path), step=1)
  assert step == 1
  assert_bitwise(params, state["params"])
  params, _, step = ck.restore_params(os.path.join(tmp_path, "checkpoints", "1"))
  assert step == 1
  with pytest.raises(UserError, match="no checkpoint at step 9"):
    ck.restore_params(str(tmp_path), step=9)
  with pytest.raises(UserError, match="no checkpoints here"):
    ck.restore_params(str(tmp_path / "nothing"))


def _handled(guard, timeout=10.0) -> bool:
  """Wait for the Python handler: the OS may deliver the signal to another (JAX/Orbax) thread,
  and the main thread runs the handler only at its next check (late on a loaded machine)."""
  t0 = time.time()
  while guard.signum is None and time.time() - t0 < timeout:
    time.sleep(0.01)
  return guard.signum is not None


def test_preemption_guard_sigterm_and_sigint():
  before = signal.getsignal(signal.SIGTERM)
  # What the guard must put back: Python's default_int_handler, or SIG_IGN when this process
  # started with SIGINT ignored (a background job, `nohup`).
  before_int = signal.getsignal(signal.SIGINT)
  with PreemptionGuard() as guard:
    assert not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)  # the process survives: the handler only sets a flag
    assert _handled(guard)
    assert guard.should_stop(2) and guard.signal_name == "SIGTERM"
    assert guard.should_stop(3)  # stays stopped
  assert signal.getsignal(signal.SIGTERM) is before
  with PreemptionGuard() as guard:
    os.kill(os.getpid(), signal.SIGINT)
    assert _handled(guard)
    assert guard.should_stop(1) and guard.signal_name == "SIGINT"
    with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C means: stop now
      os.kill(os.getpid(), signal.SIGINT)
      for _ in range(1000):                  # the handler raises at the next check
        time.sleep(0.01)
  assert signal.getsignal(signal.SIGINT) is before_int


def test_state_with_nan_is_never_saved(tmp_path):
  state = make_state()
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    c.save(1, state, None)
    bad = dict(state, params=dict(state["params"], emb=state["params"]["emb"].at[3, 4].set(
        jnp.nan)))
    with pytest.raises(FloatingPointError, match="step 2: .*NaN.*latest checkpoint stays step 1"):
      c.save(2, bad, None)
    c.wait()
    assert c.all_steps() == [1]


def test_trainstate_dataclass_roundtrip_and_params_only(tmp_path):
  from bertjax.train.state import TrainState
  s = make_state()
  state = TrainState(step=s["step"], params=s["params"], opt_state=s["opt_state"], rng=s["rng"])
  with ck.Checkpointer(tmp_path, every_steps=1, keep=2) as c:
    c.save(5, state, None)
    c.wait()
    restored, step = c.restore(abstract_of(state, single()))
  assert isinstance(restored, TrainState) and step == 5
  assert_bitwise(restored, state)
  params, _, _ = ck.restore_params(str(tmp_path))
  assert_bitwise(params, state.params)


def test_best_metric_ignores_missing_and_non_numeric_metrics(tmp_path):
  state = make_state()
  with ck.Checkpointer(tmp_path, every_steps=1, keep=1, best_metric="eval_mlm_acc") as c:
    c.save(1, state, None, metrics={"eval_mlm_acc": 0.9, "mfu": None, "note": "x"})
    c.save(2, state, None, metrics={"eval_mlm_acc": 0.5})
    c.save(3, state, None)                    # no eval at this step
    c.save(4, state, None, metrics={"eval_mlm_acc": float("nan")})
    c.wait()
    assert c.all_steps() == [1, 4]            # the best accuracy (maximised) and the last


def test_all_finite_host_and_device_paths_agree():
  """The save's NaN/Inf check: numpy over host-memory leaves, the jitted reduction otherwise."""
  import jax.numpy as jnp
  import numpy as np
  from bertjax.checkpoint import checkpointer as C
  good = {"a": jnp.ones((3, 4)), "b": [jnp.zeros(5, jnp.bfloat16), jnp.arange(3)]}
  for bad_value in (np.nan, np.inf, -np.inf):
    bad = {"a": jnp.ones((3, 4)).at[2, 1].set(bad_value), "b": good["b"]}
    assert C._all_finite(good) and not C._all_finite(bad)
    leaves = [x for x in jax.tree.leaves(bad) if jnp.issubdtype(x.dtype, jnp.inexact)]
    assert not bool(C._all_finite_jit(leaves))
  assert all(C._on_host(x) for x in jax.tree.leaves(good))
