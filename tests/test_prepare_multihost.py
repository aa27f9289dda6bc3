"""Multi-host corpus preparation (issue 16): two processes (gloo over 127.0.0.1) prepare the
same directory from real text (the bundled inaugural addresses); process 0 tokenises, process
1 waits for it and reads the same manifest; a live staging dir of another host survives; an
error on process 0 reaches process 1 as the same line. `bertjax pretrain` on 2 processes over
real text runs through this in tests/test_elastic_resume.py."""
import json
import os
import socket
import subprocess
import sys
import textwrap

import reliability_util as R

WORKER = textwrap.dedent("""
  import json, os, sys
  pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
  os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
  os.environ["JAX_PLATFORMS"] = "cpu"
  sys.path.insert(0, {repo!r})
  import jax
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{{port}}", num_processes=2,
                             process_id=pid)
  from bertjax.config import base_config
  from bertjax.data import prepare, prepare_hosts
  from bertjax.errors import UserError
  calls = []
  real = prepare.prepare_corpus
  def counted(*a, **kw):
    calls.append(a[1])
    return real(*a, **kw)
  prepare_hosts.prepare_corpus = counted
  d = base_config().data
  d.tokenizer, d.heldout_fraction = {spm!r}, 0.1
  d.corpus = os.path.join(root, "empty", "*.txt")  # no text: process 0 fails
  try:
    prepare_hosts.prepare_once(d, os.path.join(root, "bad"))
    err = ""
  except UserError as e:
    err = str(e)
  d.corpus = {corpus!r}
  m = prepare_hosts.prepare_once(d, os.path.join(root, "prepared"))
  with open(os.path.join(root, f"out{{pid}}.json"), "w") as f:
    json.dump({{"calls": len(calls), "error": err, "splits": m["splits"]}}, f)
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_prepare_once_from_real_text(tmp_path):
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("\n\n")
  done = subprocess.Popen(["true"])
  done.wait()  # a pid that is not alive here, but is another host's live preparation
  live = tmp_path / "prepared" / f".preparing-another-host-{done.pid}"
  stale = tmp_path / "prepared" / f".preparing-{socket.gethostname()}-{done.pid}"
  stale.mkdir(parents=True)  # this host's, of a killed run: removed
  live.mkdir(parents=True)
  (live / "train-00000.array_record").write_bytes(b"partial")
  script = tmp_path / "worker.py"
  script.write_text(WORKER.format(repo=R.REPO, spm=R.SPM, corpus=R.CORPUS))
  port = str(_free_port())
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=240)
    assert p.returncode == 0, err[-3000:]
  outs = [json.loads((tmp_path / f"out{i}.json").read_text()) for i in range(2)]
  assert [o["calls"] for o in outs] == [2, 0]  # process 1 never prepared
  assert outs[0]["error"] and outs[0]["error"] == outs[1]["error"]
  assert "no text left" in outs[1]["error"]
  assert outs[0]["splits"] == outs[1]["splits"]
  assert outs[0]["splits"]["train"]["tokens"] > 50_000
  assert (live / "train-00000.array_record").read_bytes() == b"partial"
  assert not stale.exists()
  assert [n for n in os.listdir(tmp_path / "prepared") if n.startswith(".preparing-")] == [
      live.name]
