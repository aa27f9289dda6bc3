"""Two processes (4 CPU devices each, gloo over 127.0.0.1) share one Checkpointer:
SIGTERM delivered to one process stops both at the same step; each process saves and restores
its own data-iterator position; the globally sharded state round-trips bitwise."""
import os
import socket
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = textwrap.dedent("""
  import os, signal, sys
  pid, port, wd = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, {repo!r})
  import jax
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=2,
                             process_id=pid)
  import grain, numpy as np
  from bertjax import checkpoint as ck
  from bertjax.train.preemption import PreemptionGuard
  P = jax.sharding.PartitionSpec
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sh = jax.sharding.NamedSharding(mesh, P("data"))
  full = np.arange(64, dtype=np.float32).reshape(16, 4)
  state = {{"params": {{"w": jax.make_array_from_callback(full.shape, sh, lambda i: full[i])}}}}

  def make_iter():  # each process reads its own stream
    return iter(grain.MapDataset.range(1000).shuffle(seed=pid).batch(4).to_iter_dataset())

  it = make_iter()
  c = ck.Checkpointer(wd, every_steps=0, keep=2)
  with PreemptionGuard() as guard:
    for step in range(1, 100):
      next(it)
      if pid == 1 and step == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # only process 1 is told to stop
      if guard.should_stop(step):
        break
  c.save(step, state, it, force=True)
  c.wait()
  want = next(it)
  it2 = make_iter()
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), state)
  restored, got = c.restore(abstract, it2)
  c.close()
  assert got == step
  np.testing.assert_array_equal(next(it2), want)
  local = [np.asarray(s.data) for s in restored["params"]["w"].addressable_shards]
  assert all((a == full[s.index]).all()
             for a, s in zip(local, restored["params"]["w"].addressable_shards))
  print("OK", pid, step, flush=True)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_agree_on_stop_step_and_keep_their_data_positions(tmp_path):
  script = tmp_path / "worker.py"
  script.write_text(WORKER.format(repo=REPO))
  port, wd = str(_free_port()), str(tmp_path / "wd")
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, wd], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = []
  for p in procs:
    out, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
    outs.append(out.split())
  # both stopped at step 5, the step process 1 got SIGTERM
  assert [o[-3:] for o in outs] == [["OK", "0", "5"], ["OK", "1", "5"]]
  data_dir = os.path.join(wd, "checkpoints", "5", "data")
  assert sorted(n for n in os.listdir(data_dir) if n.startswith("process_")) == [
      "process_0-of-2.json", "process_1-of-2.json"]
