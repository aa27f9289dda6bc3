"""Training throughput of the real train step vs transformers, and MFU vs the measured peak.

What one "step" is: `bertjax.train.step.make_train_step` (the trainer's jitted step: forward,
backward, clipping, AdamW, donated state) on the pretraining task's synthetic batches
(`pretrain_task(cfg, synthetic=True)`), on this machine's real devices (one CPU device under
`make bench`). The peer is transformers' BertForPreTraining with torch.optim.AdamW in its own
environment (.venv-peer, benchmarks/hf_peer.py), same config, batch and machine, fp32 and bf16
autocast. Each configuration runs in its own subprocess (clean peak RSS, no cross-talk).

MFU = model FLOPs per step (bertjax.train.metrics.bert_pretraining_flops: 3 x forward matmul
FLOPs; MLM head on the P masked positions) / step time / the matmul peak measured in this run
for the same precision (benchmarks/peak.py: f32 for float32 rows, bf16 x bf16 -> f32 for
bfloat16 rows). The peer's MFU counts its own work (MLM head on all S positions).

Run: `python -m benchmarks.run train` (BENCH_QUICK=1: fewer steps, fewer cases).
"""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
REPO = HERE.parent
PEER_PY = REPO / ".venv-peer" / "bin" / "python"
PEER_PINS = ["torch==2.13.0", "transformers==4.57.6", "numpy"]
QUICK = os.environ.get("BENCH_QUICK", "") not in ("", "0")

MINI = dict(size="mini", seq=128, batch=32, preds=20)          # L4/H256/A4/I1024, V=30522
BASE128 = dict(size="base", seq=128, batch=32, preds=20)
BASE512 = dict(size="base", seq=512, batch=8, preds=80)
LABEL = {"mini": "L4/H256 (BERT-mini)", "base": "BERT-base"}
# The settings the trainer uses by default for each precision (the ablation varies one at a time).
BEST = dict(mixed_bwd=True, fused_qkv=False, donate=True, host_alloc=True, remat=False,
            hash_dropout=True, bias_matvec=True, closed_form_gelu=True,
            small_transpose=True, dense_bias_matvec=True)


def _steps(n: int) -> int:
  return max(2, n // 3) if QUICK else n


def main_cases() -> list[dict]:
  cases = [
      dict(MINI, dtype="float32", steps=_steps(6)),
      dict(MINI, dtype="bfloat16", steps=_steps(12)),
      dict(BASE128, dtype="bfloat16", steps=_steps(5)),
      dict(BASE512, dtype="bfloat16", steps=_steps(4)),
  ]
  return [dict(BEST, **c) for c in cases]


def ablation_cases() -> list[tuple[str, dict]]:
  """(what changed, case): one knob at a time from the best bf16 setting of L4/H256."""
  best = dict(BEST, **MINI, dtype="bfloat16", steps=_steps(6))
  rows = [
      ("best (bf16, bf16 backward, donated, host allocator kept)", best),
      ("float32 compute", dict(best, dtype="float32")),
      ("bf16 forward only (autodiff backward runs f32 x f32 matmuls)", dict(best, mixed_bwd=False)),
      ("dropout masks from jax.random (threefry), as flax.linen.Dropout",
       dict(best, hash_dropout=False)),
      ("MLM bias gradient as XLA's row reduction", dict(best, bias_matvec=False)),
      ("Dense bias and position-embedding gradients as XLA reductions (not ones @ g)",
       dict(best, dense_bias_matvec=False)),
      ("GELU by autodiff of jax.nn.gelu (erfc form)", dict(best, closed_form_gelu=False)),
      ("weight gradients copy the larger operand transposed (FFN output: [I, B*S])",
       dict(best, small_transpose=False)),
      ("fused QKV (one [H, 3H] matmul)", dict(best, fused_qkv=True)),
      ("state not donated", dict(best, donate=False)),
      ("default glibc allocator (page faults on every step)", dict(best, host_alloc=False)),
      ("MLM logits at all S positions (P = S)", dict(best, preds=MINI["seq"])),
      ("remat (recompute layers in backward)", dict(best, remat=True)),
  ]
  if not QUICK:
    base = dict(BEST, **BASE512, dtype="bfloat16", steps=2)
    rows += [("BERT-base S=512 B=8, best", base),
             ("BERT-base S=512 B=8, remat", dict(base, remat=True))]
  return rows


# ---------------------------------------------------------------------------------------------
# Child process: one configuration of the real train step.

def _autodiff_matmul(spec, a, b, config):
  """The model's matmul before the bf16 backward: autodiff transposes with an f32 cotangent."""
  import jax.numpy as jnp
  from bertjax.model import dtype_of
  dt = dtype_of(config)
  return jnp.einsum(spec, a.astype(dt), b.astype(dt), preferred_element_type=jnp.float32)


def _first_operand_owns_output(out, x, xv, y, yv):
  """The model's `_einsum_pair` before it chose which weight-gradient operand to transpose."""
  import jax.numpy as jnp
  if next(ch for ch in out if (ch in x) != (ch in y)) not in x:
    x, xv, y, yv = y, yv, x, xv
  return jnp.einsum(f"{x},{y}->{out}", xv, yv, preferred_element_type=jnp.float32)


def run_case(case: dict) -> dict:
  """Compile and time the trainer's step for `case`; returns times and memory figures."""
  import resource
  if case["host_alloc"]:
    from bertjax.hostmem import keep_freed_memory
    keep_freed_memory()
  import jax
  from bertjax import config as config_lib
  from bertjax import model as model_lib
  from bertjax import sharding as shd
  from bertjax.train import metrics as mlib
  from bertjax.train import setup
  from bertjax.train.pretrain import pretrain_task

  # Ablations put back what the model did before each speed-up.
  if not case["mixed_bwd"]:
    model_lib.matmul = _autodiff_matmul
  if not case.get("hash_dropout", True):
    import flax.linen as nn
    model_lib.Dropout = nn.Dropout
  if not case.get("bias_matvec", True):
    model_lib.add_bias = lambda y, bias: y + bias
  if not case.get("dense_bias_matvec", True):
    model_lib.bias_add = lambda y, bias: y + bias
  if not case.get("closed_form_gelu", True):
    model_lib.gelu = lambda x: jax.nn.gelu(x, approximate=False)
  if not case.get("small_transpose", True):
    model_lib._einsum_pair = _first_operand_owns_output
  cfg = config_lib.base_config()
  cfg.model = config_lib.model_config(case["size"])
  m, d, t = cfg.model, cfg.data, cfg.train
  m.dtype, m.fused_qkv, m.remat = case["dtype"], case["fused_qkv"], case["remat"]
  d.max_seq_length, d.max_predictions_per_seq = case["seq"], case["preds"]
  t.global_batch_size = case["batch"]
  mesh = shd.make_mesh(cfg.mesh)
  config_lib.validate(cfg, shd.mesh_size(mesh))
  task = pretrain_task(cfg, synthetic=True)
  host_batch = next(task.train_iter)
  pieces = setup.build(task, cfg, mesh, host_batch)   # the trainer's own pieces
  state = pieces.init_state()
  step = pieces.make_step(donate=case["donate"])
  batch = shd.shard_batch(host_batch, mesh)

  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  # Warm-up: the first steps also grow the host heap (hostmem keeps it from then on).
  for _ in range(2 if case["seq"] > 128 else 3):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  wall, cpu = [], []
  faults0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(case["steps"]):
    t0, c0 = time.perf_counter(), time.process_time()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults0) / case["steps"]
  loss = float(metrics["loss"])
  if not np.isfinite(loss):
    raise RuntimeError(f"non-finite loss {loss} in {case}")
  return {
      "step_s": wall, "cpu_s": cpu, "compile_s": compile_s, "loss": loss,
      "flops_per_step": mlib.bert_pretraining_flops(m, case["batch"], case["seq"], case["preds"]),
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "xla_temp_mb": mem.temp_size_in_bytes / 2**20 if mem else None,
      "xla_args_mb": mem.argument_size_in_bytes / 2**20 if mem else None,
      "page_faults_per_step": faults, "devices": str(jax.devices()),
  }


# ---------------------------------------------------------------------------------------------
# Parent: subprocesses, the peer environment, tables.

def _child_env() -> dict:
  env = dict(os.environ)
  # Benchmark the real devices: drop the test-only virtual device count if the caller set it.
  flags = [f for f in env.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  env["XLA_FLAGS"] = " ".join(flags)
  env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run_json(cmd: list[str], timeout: int = 1800) -> dict:
  """Run a subprocess that prints one JSON line last; its dict, or {"error": ...}."""
  try:
    p = subprocess.run(cmd, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                       timeout=timeout)
  except subprocess.TimeoutExpired:
    return {"error": f"timed out after {timeout} s"}
  lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
  if p.returncode or not lines:
    return {"error": (p.stderr or p.stdout)[-1500:]}
  return json.loads(lines[-1])


def measure_ours(case: dict) -> dict:
  return _run_json([sys.executable, "-m", "benchmarks.bench_train", "--case", json.dumps(case)])


def ensure_peer_env() -> str | None:
  """Create .venv-peer (torch CPU wheel + transformers) if missing; None if it can't be made."""
  lock = open("/tmp/venv-peer.lock", "w")
  fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be creating it right now
  try:
    check = [str(PEER_PY), "-c", "import torch, transformers"]
    if PEER_PY.exists() and subprocess.run(check, capture_output=True).returncode == 0:
      return None
    print("[bench train] creating .venv-peer (torch CPU + transformers) ...", flush=True)
    subprocess.run(["python3", "-m", "venv", str(REPO / ".venv-peer")], check=True)
    pip = [str(REPO / ".venv-peer" / "bin" / "pip"), "install", "-q"]
    # The CPU wheel first, from the local wheel directory when there is one, so the resolver
    # never reaches for a CUDA build.
    wheels = sorted(pathlib.Path("/opt/wheels").glob("torch-2.13.0+cpu-*.whl"))
    torch_spec = [str(wheels[-1])] if wheels else [
        "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
    subprocess.run(pip + torch_spec, check=True)
    subprocess.run(pip + PEER_PINS, check=True)
    return None
  except (subprocess.CalledProcessError, OSError) as e:
    return f"could not create .venv-peer: {e}"
  finally:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def measure_peer(case: dict, precision: str) -> dict:
  from bertjax.config import MODEL_SIZES
  layers, hidden, heads = MODEL_SIZES[case["size"]]
  steps = min(case["steps"], 5) if case["size"] == "mini" else max(2, case["steps"] - 2)
  cmd = [str(PEER_PY), str(HERE / "hf_peer.py"), "--layers", str(layers), "--hidden", str(hidden),
         "--heads", str(heads), "--seq", str(case["seq"]), "--batch", str(case["batch"]),
         "--preds", str(case["preds"]), "--precision", precision, "--steps", str(steps),
         "--warmup", "2" if case["size"] == "mini" else "1"]
  return _run_json(cmd)


def measure_peaks() -> dict:
  return _run_json([sys.executable, "-m", "benchmarks.peak"])


def _stats(xs: list[float]) -> dict:
  return {"median": float(np.median(xs)), "min": float(np.min(xs)), "max": float(np.max(xs))}


def _summarise(r: dict, batch: int, seq: int, flops: float | None, peak_gflops: float | None):
  """Adds seq/s, tokens/s, GFLOP/s and MFU (median, and from the fastest/slowest step)."""
  if "error" in r:
    return r
  st = _stats(r["step_s"])
  r["step"] = st
  r["seq_per_s"] = {"median": batch / st["median"], "min": batch / st["max"],
                    "max": batch / st["min"]}
  r["tokens_per_s"] = {k: v * seq for k, v in r["seq_per_s"].items()}
  if flops:
    r["gflops"] = {k: flops * v / batch / 1e9 for k, v in r["seq_per_s"].items()}
    if peak_gflops:
      r["mfu"] = {k: v / peak_gflops for k, v in r["gflops"].items()}
  return r


def _peer_flops(case: dict) -> float:
  """The peer's own model FLOPs: its MLM head scores all S positions."""
  from bertjax.config import model_config
  from bertjax.train.metrics import bert_pretraining_flops
  return bert_pretraining_flops(model_config(case["size"]), case["batch"], case["seq"],
                                case["seq"])


def _fmt_range(d: dict, fmt: str = "{:.1f}") -> str:
  return f"{fmt.format(d['median'])} ({fmt.format(d['min'])}–{fmt.format(d['max'])})"


def _case_name(c: dict) -> str:
  return f"{LABEL[c['size']]} S={c['seq']} B={c['batch']} P={c['preds']}"


def _load_probe(loads: list) -> None:
  """Sample the 1-minute load average (between cases; the verdict needs a quiet machine)."""
  loads.append(os.getloadavg()[0])


def run(out_dir: str) -> dict:
  loads = []
  _load_probe(loads)
  peak0 = measure_peaks()
  peer_error = ensure_peer_env()
  rows, ablation = [], []
  for case in main_cases():
    print(f"[bench train] {_case_name(case)} {case['dtype']}", flush=True)
    rows.append({"case": case, "impl": "bertjax", "precision": case["dtype"],
                 "result": measure_ours(case)})
    _load_probe(loads)
    if case["dtype"] == "bfloat16":  # the peer once per configuration, both precisions
      for precision in ("fp32", "bf16"):
        r = {"error": peer_error} if peer_error else measure_peer(case, precision)
        rows.append({"case": case, "impl": "transformers", "precision": precision, "result": r})
        _load_probe(loads)
  for what, case in ablation_cases():
    print(f"[bench train] ablation: {what}", flush=True)
    ablation.append({"what": what, "case": case, "result": measure_ours(case)})
  print("[bench train] matmul bound (the step's matmuls alone)", flush=True)
  bound = _run_json([sys.executable, "-m", "benchmarks.matmul_bound", "--json", "-"])
  _load_probe(loads)
  peak1 = measure_peaks()

  peaks = {}
  for p in ("float32", "bfloat16", "bf16_out"):
    vals = [pk[p]["gflops"] for pk in (peak0, peak1) if p in pk]
    peaks[p] = max(vals) if vals else None
  prec_peak = {"float32": peaks["float32"], "bfloat16": peaks["bfloat16"],
               "fp32": peaks["float32"], "bf16": peaks["bfloat16"]}
  for row in rows + ablation:
    c = row["case"]
    peer = row.get("impl") == "transformers"
    flops = _peer_flops(c) if peer else row["result"].get("flops_per_step")
    _summarise(row["result"], c["batch"], c["seq"], flops,
               prec_peak[row.get("precision", c["dtype"])])

  data = {"peak_gflops": peaks, "peak_runs": [peak0, peak1], "rows": rows, "ablation": ablation,
          "quick": QUICK, "matmul_bound": bound}
  data["goals"] = _goals(rows, peaks)
  # Another job on the machine slows the PyTorch peer far more than the XLA step (5.0 vs 23.5
  # seq/s idle, seen at load ~6 on 2 cores), inflating the ratio: no verdict from a loaded run.
  data["load_avg"] = {"max": max(loads), "samples": loads, "cpus": os.cpu_count()}
  if data["goals"] and max(loads) > (os.cpu_count() or 1) + 1.0:
    data["goals"]["loaded"] = True
  return {"title": "Training throughput: bertjax train step vs transformers (PyTorch)",
          "markdown": _markdown(data), "data": data}


def _goals(rows: list[dict], peaks: dict) -> dict:
  def seqs(impl, precision):
    for r in rows:
      c = r["case"]
      if (c["size"], c["seq"]) == ("mini", 128) and r["impl"] == impl and \
          r["precision"] == precision and "seq_per_s" in r["result"]:
        return r["result"]
    return None
  ours = seqs("bertjax", "bfloat16")
  peers = [x for x in (seqs("transformers", "fp32"), seqs("transformers", "bf16")) if x]
  if not ours or not peers:
    return {}
  best_peer = max(p["seq_per_s"]["median"] for p in peers)
  return {"mini_seq_per_s": ours["seq_per_s"]["median"], "best_transformers_seq_per_s": best_peer,
          "speedup": ours["seq_per_s"]["median"] / best_peer,
          "mfu_vs_bf16_peak": ours.get("mfu", {}).get("median"),
          "speedup_goal_met": ours["seq_per_s"]["median"] >= 5 * best_peer,
          "mfu_goal_met": (ours.get("mfu", {}).get("median") or 0) >= 0.30}


def _markdown(data: dict) -> str:
  pk = data["peak_gflops"]
  out = ["Matmul peak measured in this run (benchmarks/peak.py; best of the runs before and "
         "after the training cases):", "",
         "| precision | GFLOP/s |", "|---|---|"]
  names = {"float32": "f32 x f32 -> f32", "bfloat16": "bf16 x bf16 -> f32 (AMX)",
           "bf16_out": "bf16 x bf16 -> bf16 (not the fast path on XLA:CPU)"}
  out += [f"| {names[p]} | {v:.0f} |" for p, v in pk.items() if v]
  out += ["", "Seq/s and step time: median (slowest–fastest step). MFU vs the peak of the same "
          "precision. Peer ratio: seq/s over the best transformers setting of the same "
          "configuration.", "",
          "| configuration | impl | precision | seq/s | tokens/s | step ms | MFU | vs best "
          "transformers | compile s | peak RSS MB | XLA temp MB |",
          "|---|---|---|---|---|---|---|---|---|---|---|"]
  best_peer = {}
  for r in data["rows"]:
    res = r["result"]
    if r["impl"] == "transformers" and "seq_per_s" in res:
      key = _case_name(r["case"])
      best_peer[key] = max(best_peer.get(key, 0), res["seq_per_s"]["median"])
  for r in data["rows"]:
    res, key = r["result"], _case_name(r["case"])
    if "error" in res:
      out.append(f"| {key} | {r['impl']} | {r['precision']} | failed: "
                 f"{res['error'].splitlines()[-1][:120] if res['error'] else '?'} |||||||")
      continue
    mfu = f"{100 * res['mfu']['median']:.1f}%" if "mfu" in res else "–"
    ratio = (f"{res['seq_per_s']['median'] / best_peer[key]:.2f}x" if best_peer.get(key) else "–")
    st = {k: 1e3 * v for k, v in res["step"].items()}
    out.append(
        f"| {key} | {r['impl']} | {r['precision']} | {_fmt_range(res['seq_per_s'])} | "
        f"{res['tokens_per_s']['median']:.0f} | {_fmt_range(st, '{:.0f}')} | {mfu} | {ratio} | "
        f"{res.get('compile_s', float('nan')):.1f} | {res['peak_rss_mb']:.0f} | "
        f"{res['xla_temp_mb']:.0f} |" if r["impl"] == "bertjax" else
        f"| {key} | {r['impl']} | {r['precision']} | {_fmt_range(res['seq_per_s'])} | "
        f"{res['tokens_per_s']['median']:.0f} | {_fmt_range(st, '{:.0f}')} | {mfu} | {ratio} | "
        f"– | {res['peak_rss_mb']:.0f} | – |")
  g = data.get("goals") or {}
  if g and g.get("loaded"):
    la = data["load_avg"]
    out += ["", f"**Goals not judged:** the 1-minute load average reached {la['max']:.1f} on "
            f"{la['cpus']} cores during this run (other jobs); under load the PyTorch peer slows "
            f"far more than the XLA step, so the ratio (here {g['speedup']:.2f}x) overstates. "
            "Rerun on a quiet machine."]
  elif g:
    out += ["", f"**Goals (L4/H256, S=128, B=32):** bertjax bf16 {g['mini_seq_per_s']:.1f} seq/s = "
            f"**{g['speedup']:.2f}x** the best transformers setting ({g['best_transformers_seq_per_s']:.1f}"
            f" seq/s; goal >= 5x: {'met' if g['speedup_goal_met'] else 'NOT met'}); MFU vs the "
            f"bf16 peak **{100 * (g['mfu_vs_bf16_peak'] or 0):.1f}%** (goal >= 30%: "
            f"{'met' if g['mfu_goal_met'] else 'NOT met'})."]
  b = data.get("matmul_bound") or {}
  if "rows" in b:
    sk, st = b["rows"]["matmul skeleton (fwd + bwd)"], b["rows"]["train step"]
    out += ["", f"**MFU ceiling** (benchmarks/matmul_bound.py, {b['config']}, one process, "
            f"interleaved): the train step's matmuls alone (same shapes and bf16 matmul path, no "
            f"softmax/LayerNorm/GELU/dropout/loss/optimizer) run {sk['seq_per_s']:.1f} seq/s = "
            f"**{100 * sk['mfu']:.1f}% MFU** against the bf16 peak measured in that process "
            f"({b['bf16_peak_gflops']:.0f} GFLOP/s); the real step beside it: "
            f"{st['seq_per_s']:.1f} seq/s, {100 * st['mfu']:.1f}% MFU; matmuls are "
            f"{100 * b['matmul_share_of_step']:.0f}% of its time."]
  elif b:
    out += ["", f"MFU ceiling: matmul_bound failed: {str(b.get('error'))[-200:]}"]
  out += ["", "Ablation (L4/H256 unless stated; one setting changed from the best): seq/s median "
          "(range), time relative to the best row, CPU seconds per step (all threads; less "
          "sensitive than wall time to other processes on a shared machine), page faults per "
          "step.", "",
          "| setting | seq/s | step time vs best | CPU s/step | MFU | compile s | page faults/step | "
          "XLA temp MB | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
  ref = {}
  for a in data["ablation"]:
    res = a["result"]
    if "error" in res:
      out.append(f"| {a['what']} | failed: {res['error'].splitlines()[-1][:120]} ||||||||")
      continue
    group = a["case"]["size"] + str(a["case"]["seq"])
    ref.setdefault(group, res["step"]["median"])
    mfu = f"{100 * res['mfu']['median']:.1f}%" if "mfu" in res else "–"
    out.append(f"| {a['what']} | {_fmt_range(res['seq_per_s'])} | "
               f"{res['step']['median'] / ref[group]:.2f}x | {np.median(res['cpu_s']):.2f} | {mfu} | "
               f"{res['compile_s']:.1f} | {res['page_faults_per_step']:.0f} | "
               f"{res['xla_temp_mb']:.0f} | {res['peak_rss_mb']:.0f} |")
  if data["quick"]:
    out += ["", "_BENCH_QUICK=1: fewer steps and cases than `make bench`._"]
  return "\n".join(out)


if __name__ == "__main__":
  if len(sys.argv) == 3 and sys.argv[1] == "--case":
    print(json.dumps(run_case(json.loads(sys.argv[2]))))
  else:
    result = run(str(HERE / "out"))
    print(result["markdown"])
