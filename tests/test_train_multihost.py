"""Two processes on 127.0.0.1 (gloo), 4 CPU devices each == one process with 8 devices."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from multihost_worker import tiny_cfg

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_two_processes_equal_one_process_with_8_devices(tmp_path):
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "multihost_worker.py"), str(i), "2", str(port),
       str(tmp_path / "multi"), str(tmp_path / f"out{i}.json")],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=420)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      pytest.fail("multi-process workers timed out")
  assert all(p.returncode == 0 for p in procs), "\n\n".join(logs)[-4000:]
  outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
  assert [o["processes"] for o in outs] == [2, 2] and outs[0]["devices"] == 8
  assert [o["local_rows"] for o in outs] == [16, 16]  # each process fed half the global batch
  assert outs[0]["eval"] == outs[1]["eval"]  # evaluation agrees across processes

  from bertjax.train.loop import train
  from bertjax.train.pretrain import pretrain_task
  cfg = tiny_cfg()
  single = train(pretrain_task(cfg, synthetic=True), cfg, str(tmp_path / "single"),
                 progress=False)
  assert single["devices"] == 8 and single["processes"] == 1
  multi, one = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
  assert [s for s, _ in multi] == [1, 2, 3, 4, 5]
  np.testing.assert_allclose([l for _, l in multi], [l for _, l in one], atol=1e-5, rtol=0)
  for k, v in single["eval"].items():
    assert abs(outs[0]["eval"][k] - v) < 1e-5
  assert os.path.isdir(tmp_path / "multi" / "checkpoints" / "5")  # saved by both processes
