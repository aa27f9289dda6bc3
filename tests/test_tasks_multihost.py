"""Fine-tuning on two processes (gloo, 4 CPU devices each) == one process with 8 devices:
the same global batches, losses, dev metrics and predictions (written once, by process 0)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from multihost_finetune_worker import finetune_cfg
from test_tasks_finetune import VOCAB, _sentences

HERE = os.path.dirname(os.path.abspath(__file__))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [(r["step"], r["loss"]) for r in map(json.loads, f) if "loss" in r]


@pytest.mark.slow
def test_finetune_two_processes_equal_one_process(tmp_path):
  rng = np.random.default_rng(3)
  data = tmp_path / "data"
  data.mkdir()
  for split, n in (("train", 64), ("dev", 20)):   # 20 dev rows: the last eval batch is padded
    body = [f"{t}\t{'pos' if y else 'neg'}" for t, y in _sentences(rng, n)]
    (data / f"{split}.tsv").write_text("\n".join(["text\tlabel"] + body) + "\n")
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(VOCAB) + "\n")
  port = _free_port()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen(
      [sys.executable, os.path.join(HERE, "multihost_finetune_worker.py"), str(i), "2",
       str(port), str(data), str(vocab), str(tmp_path / "multi"), str(tmp_path / f"out{i}.json")],
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
  assert [o["processes"] for o in outs] == [2, 2] and outs[0]["steps"] == 8
  assert outs[0]["results"] == outs[1]["results"]     # both processes saw the same metrics

  from bertjax.tasks import finetune
  single = finetune.run(finetune_cfg(str(data), str(vocab)), str(tmp_path / "single"),
                        progress=False)
  multi, one = _losses(tmp_path / "multi"), _losses(tmp_path / "single")
  assert [s for s, _ in multi] == list(range(1, 9))
  np.testing.assert_allclose([l for _, l in multi], [l for _, l in one], atol=1e-5, rtol=0)
  assert outs[0]["results"]["dev"]["accuracy"] == pytest.approx(
      single["results"]["dev"]["accuracy"], abs=1e-9)
  pred_multi = open(outs[0]["predictions"]["dev"]).read()
  pred_single = open(single["predictions"]["dev"]).read()
  assert outs[0]["predictions"]["dev"].startswith(str(tmp_path / "multi"))
  assert pred_multi == pred_single and len(pred_multi.splitlines()) == 21
