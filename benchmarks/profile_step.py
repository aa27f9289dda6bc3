"""Where the train step's time goes: parts timed side by side, and a per-op breakdown.

Run: `python -m benchmarks.profile_step` (L4/H256, S=128, B=32, bf16; `--size base`, `--seq`,
`--batch`, `--dtype float32`, `--hlo FILE` to dump the optimized HLO, `--json FILE`).

Two views, both in one process (the machine is shared, so same-process ratios mean most):

1. Parts, each its own jitted function, timed interleaved (median of `--repeats` rounds, wall
   and CPU seconds of all threads): the whole train step; the forward loss; forward + backward
   (value_and_grad, no optimizer); the optimizer update alone (clipping + AdamW + apply on
   gradients of the same tree); the MLM head + loss forward + backward alone (from the encoder
   output; includes the tied [V, H] decoder's gradient); one encoder layer forward + backward.
2. Per op: the train step's compiled HLO is run under `jax.profiler.trace`; every executed op's
   time (CPU time summed over XLA's threads, per step) is put in a category by its HLO metadata
   (matmuls of the encoder / of the MLM decoder, attention softmax and masking, LayerNorm, GELU,
   dropout, MLM softmax cross-entropy and accuracy, embedding gradient, optimizer, ...), and each
   matmul's FLOPs are read from the HLO, so each category's achieved GFLOP/s shows how far below
   the matmul peak it runs.
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import shutil
import sys
import tempfile
import time

import numpy as np


def build(size: str, dtype: str, seq: int, batch: int, preds: int):
  """The pretraining task, optimizer, state, batch and (not donated) train step of a config."""
  from bertjax.hostmem import keep_freed_memory
  keep_freed_memory()
  from bertjax import config as config_lib
  from bertjax import sharding as shd
  from bertjax.train import setup
  from bertjax.train.pretrain import pretrain_task
  cfg = config_lib.base_config()
  cfg.model = config_lib.model_config(size)
  cfg.model.dtype = dtype
  cfg.data.max_seq_length, cfg.data.max_predictions_per_seq = seq, preds
  cfg.train.global_batch_size = batch
  mesh = shd.make_mesh(cfg.mesh)
  task = pretrain_task(cfg, synthetic=True)
  host_batch = next(task.train_iter)
  pieces = setup.build(task, cfg, mesh, host_batch)   # the trainer's own pieces
  return (cfg, task, pieces.tx, pieces.init_state(), shd.shard_batch(host_batch, mesh),
          pieces.make_step(donate=False))


def parts(cfg, task, tx, state, batch, step) -> dict:
  """name -> zero-argument callable running one jitted part (see the module doc)."""
  import jax
  import jax.numpy as jnp
  import optax
  from bertjax import model as model_lib
  from bertjax.losses import pretraining_sums
  c = cfg.model
  key = jax.random.key(0)
  params = state.params
  loss = lambda p, b, k: task.loss_fn(p, b, k)[0]
  fwd = jax.jit(loss)
  fwd_bwd = jax.jit(jax.value_and_grad(loss))
  grads = fwd_bwd(params, batch, key)[1]

  def update(g, opt_state, p):
    norm = optax.tree.norm(g)
    u, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, u), opt_state, norm
  update = jax.jit(update)

  # The MLM head + loss alone, from a random encoder output [B, S, H].
  model = model_lib.BertForPreTraining(c)
  b, s = batch["input_ids"].shape
  seq_out = jax.random.normal(key, (b, s, c.hidden_size), jnp.float32).astype(
      model_lib.dtype_of(c))
  head_params = {k: params[k] for k in ("mlm_transform", "mlm_norm", "mlm_output_bias")}
  word = params["bert"]["embeddings"]["word_embeddings"]

  import flax.linen as nn

  class Head(nn.Module):  # the head of BertForPreTraining (same code, same parameter names)
    @nn.compact
    def __call__(self, x, word):
      x = jnp.take_along_axis(x, batch["masked_lm_positions"][..., None], axis=1)  # [B, P, H]
      t = model_lib.gelu(model_lib.Dense(c.hidden_size, c, name="mlm_transform")(x))
      t = model_lib.LayerNorm(c, name="mlm_norm")(t)
      bias = self.param("mlm_output_bias", nn.initializers.zeros, (c.vocab_size,))
      return model_lib.add_bias(model_lib.matmul("bph,hv->bpv", t, word.T, c), bias)  # [B,P,V]

  def head_loss(hp, word, x):
    logits = Head().apply({"params": hp}, x, word)
    return pretraining_sums(logits, jnp.zeros((b, 2), jnp.float32), batch)["mlm_loss"]
  head_grad = jax.jit(jax.grad(head_loss, argnums=(0, 1, 2)))

  layer = model_lib.TransformerLayer(c)
  lp = params["bert"]["layer_0"]
  mask = batch["input_mask"]

  def layer_loss(lp, x):
    y = layer.apply({"params": lp}, x, mask, False, rngs={"dropout": key})
    return jnp.sum(y.astype(jnp.float32))
  layer_grad = jax.jit(jax.grad(layer_loss, argnums=(0, 1)))
  return {
      "train step (fwd + bwd + optimizer)": lambda: step(state, batch),
      "forward (loss)": lambda: fwd(params, batch, key),
      "forward + backward (no optimizer)": lambda: fwd_bwd(params, batch, key),
      "optimizer (clip + AdamW + apply)": lambda: update(grads, state.opt_state, params),
      "MLM head + loss, fwd + bwd (incl. [V, H] grad)": lambda: head_grad(head_params, word,
                                                                        seq_out),
      "one encoder layer, fwd + bwd": lambda: layer_grad(lp, seq_out),
  }


def time_parts(fns: dict, repeats: int) -> dict:
  import jax
  for f in fns.values():  # compile + warm up
    jax.block_until_ready(f())
    jax.block_until_ready(f())
  wall = {k: [] for k in fns}
  cpu = {k: [] for k in fns}
  for _ in range(repeats):
    for k, f in fns.items():
      t, c = time.perf_counter(), time.process_time()
      jax.block_until_ready(f())
      wall[k].append(time.perf_counter() - t)
      cpu[k].append(time.process_time() - c)
  return {k: {"wall_ms": 1e3 * float(np.median(wall[k])), "cpu_ms": 1e3 * float(np.median(cpu[k]))}
          for k in fns}


# ---------------------------------------------------------------------------------------------
# Per-op breakdown from a profiler trace of the compiled step.

_OP = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|\S+) ([\w-]+)\(")
_SHAPE = re.compile(r"\s*(?:ROOT )?%?([\w.\-]+) = \w+\[([\d,]*)\]")


def hlo_ops(hlo: str) -> dict:
  """Entry op name -> {"shape", "opcode", "meta" (op_name metadata), "flops" (dots inside)}."""
  comps, cur = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^%?([\w.\-]+) .*\{$", line)
    if m and not line.startswith(" "):
      cur = comps.setdefault(m.group(1), [])
      continue
    if cur is not None:
      cur.append(line)
  shapes = {m.group(1): [int(x) for x in m.group(2).split(",") if x]
            for m in map(_SHAPE.match, hlo.splitlines()) if m}

  def dot_flops(lines):
    total = 0
    for l in lines:
      m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = \w+\[([\d,]*)\]\S* dot\(%?([\w.\-]+), ", l)
      if not m or m.group(2) not in shapes:
        continue
      out = [int(x) for x in m.group(1).split(",") if x]
      lhs = shapes[m.group(2)]
      k = np.prod([lhs[int(d)] for d in
                   re.search(r"lhs_contracting_dims=\{([\d,]*)\}", l).group(1).split(",") if d])
      total += 2 * int(np.prod(out)) * int(k)
    return total

  ops = {}
  for line in hlo[hlo.index("ENTRY"):].splitlines():
    m = _OP.match(line)
    if not m:
      continue
    name, shape, opcode = m.groups()
    meta = re.search(r'op_name="([^"]*)"', line)
    calls = re.search(r"calls=%?([\w.\-]+)", line)
    body = comps.get(calls.group(1), []) if calls else [line]
    ops[name] = {"shape": shape, "opcode": opcode, "meta": meta.group(1) if meta else "",
                 "flops": dot_flops(body) if opcode in ("fusion", "dot") else 0,
                 "body": " ".join(body)[:4000]}
  return ops


def category(name: str, op: dict, vocab: int) -> str:
  meta, shape, body = op["meta"], op["shape"], op["body"]
  bwd = "transpose(" in meta
  vocab_sized = f"{vocab}" in shape
  if op["flops"]:
    if vocab_sized or f",{vocab}]" in body or f"[{vocab}," in body:
      return "matmul: MLM decoder (tied [V, H])"
    if "/attention/" in meta and ("bqnd" in meta or "bnqk" in meta or "bknd" in meta):
      return f"matmul: attention scores / context ({'bwd' if bwd else 'fwd'})"
    if "layer_" in meta:
      return f"matmul: encoder projections + FFN ({'bwd' if bwd else 'fwd'})"
    if "reduce_sum" in meta or "reduce" in op["body"] and " dot(" not in op["body"]:
      return "reductions run as library (YNN) kernels"
    return "matmul: other (MLM transform, pooler, NSP, bias matvec)"
  if "Dropout" in meta or (not meta and ("select" in name or "compare" in body)
                           and "u32" in body):
    return "dropout (hash bits, select)"
  if not meta and "jvp(" not in meta and "select" in name:
    return "dropout (hash bits, select)"
  if vocab_sized and ("scatter" in body or "embeddings" in meta or shape.startswith(
      f"f32[{vocab},")) and "jvp(" in meta:
    return "embedding gradient (scatter-add, [H, V] -> [V, H] transpose)"
  if vocab_sized and "jvp(" not in meta and meta:
    return "optimizer + clipping (elementwise over params)"
  if vocab_sized or "reduce" in name and "s32" in shape:
    return "MLM softmax cross-entropy, argmax accuracy, bias"
  if "LayerNorm" in meta or "_norm/" in meta:
    return "LayerNorm (f32 statistics)"
  if "erf" in meta or "gelu" in meta or "erf" in body or (
      "exponential" in body and "layer_" in meta and "/attention/" not in meta):
    return "GELU (exact erf; backward: exp)"
  if "/attention/" in meta:
    return "attention mask + softmax (f32) + head transposes"
  if "embeddings" in meta:
    return "embeddings (gather, sum)"
  if meta and "jvp(" not in meta:
    return "optimizer + clipping (elementwise over params)"
  if name.startswith(("copy", "transpose")) or "transpose" in name:
    return "layout copies (transposes for matmul operands)"
  return "other elementwise (converts, residual adds)"


def trace_breakdown(step_compiled, state, batch, vocab: int, steps: int = 3) -> dict:
  import jax
  ops = hlo_ops(step_compiled.as_text())
  jax.block_until_ready(step_compiled(state, batch))
  out = tempfile.mkdtemp(prefix="profile_step_")
  try:
    with jax.profiler.trace(out, create_perfetto_trace=True):
      for _ in range(steps):
        jax.block_until_ready(step_compiled(state, batch))
    trace = glob.glob(os.path.join(out, "**", "perfetto_trace.json.gz"), recursive=True)[0]
    events = json.load(gzip.open(trace))
  finally:
    shutil.rmtree(out, ignore_errors=True)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.defaultdict(float)
  for e in events:
    if e.get("ph") == "X" and e["name"] in ops:
      per_op[e["name"]] += e["dur"] / 1e3 / steps
  cats = collections.defaultdict(lambda: {"cpu_ms": 0.0, "flops": 0, "ops": 0})
  for name, ms in per_op.items():
    c = cats[category(name, ops[name], vocab)]
    c["cpu_ms"] += ms
    c["flops"] += ops[name]["flops"]
    c["ops"] += 1
  every = [{"op": n, "cpu_ms": ms, "shape": ops[n]["shape"], "gflop": ops[n]["flops"] / 1e9,
            "meta": ops[n]["meta"].replace("jit(counted)/", "")[-90:],
            "category": category(n, ops[n], vocab)}
           for n, ms in sorted(per_op.items(), key=lambda kv: -kv[1])]
  return {"categories": dict(cats), "total_cpu_ms": sum(per_op.values()), "top_ops": every[:25],
          "ops": every}


def markdown(timed: dict, br: dict, flops_step: float) -> str:
  step_ms = timed["train step (fwd + bwd + optimizer)"]
  out = ["| part (own jitted function) | wall ms | CPU ms | share of step (CPU) |",
         "|---|---|---|---|"]
  for k, v in timed.items():
    out.append(f"| {k} | {v['wall_ms']:.0f} | {v['cpu_ms']:.0f} | "
               f"{100 * v['cpu_ms'] / step_ms['cpu_ms']:.0f}% |")
  out += ["", f"Per op (train step; CPU ms per step summed over XLA's threads; total "
          f"{br['total_cpu_ms']:.0f} ms; model FLOPs {flops_step / 1e9:.1f} GFLOP/step):", "",
          "| category | CPU ms | share | GFLOP | GFLOP/s per CPU-second | ops |",
          "|---|---|---|---|---|---|"]
  for k, v in sorted(br["categories"].items(), key=lambda kv: -kv[1]["cpu_ms"]):
    rate = f"{v['flops'] / v['cpu_ms'] / 1e6:.0f}" if v["flops"] else "–"
    out.append(f"| {k} | {v['cpu_ms']:.0f} | {100 * v['cpu_ms'] / br['total_cpu_ms']:.0f}% | "
               f"{v['flops'] / 1e9:.1f} | {rate} | {v['ops']} |")
  out += ["", "Slowest ops:", "", "| op | CPU ms | shape | GFLOP | HLO op_name |",
          "|---|---|---|---|---|"]
  for t in br["top_ops"][:15]:
    out.append(f"| {t['op']} | {t['cpu_ms']:.1f} | `{t['shape'][:40]}` | {t['gflop']:.2f} | "
               f"`{t['meta']}` |")
  return "\n".join(out)


def main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--size", default="mini")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--preds", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--no-parts", action="store_true", help="only the per-op breakdown")
  p.add_argument("--hlo", default="", help="write the step's optimized HLO here")
  p.add_argument("--json", default="", help="write the figures here as JSON")
  args = p.parse_args(argv)
  # The real devices (drop a test-only virtual device count).
  os.environ["XLA_FLAGS"] = " ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                     if "device_count" not in f)
  from bertjax.train.metrics import bert_pretraining_flops
  cfg, task, tx, state, batch, step = build(args.size, args.dtype, args.seq, args.batch,
                                            args.preds)
  compiled = step.lower(state, batch).compile()
  if args.hlo:
    with open(args.hlo, "w") as f:
      f.write(compiled.as_text())
  timed = {}
  if not args.no_parts:
    timed = time_parts(parts(cfg, task, tx, state, batch, step), args.repeats)
  br = trace_breakdown(compiled, state, batch, cfg.model.vocab_size)
  flops = bert_pretraining_flops(cfg.model, args.batch, args.seq, args.preds)
  if not timed:
    timed = {"train step (fwd + bwd + optimizer)": {"wall_ms": float("nan"),
                                                    "cpu_ms": br["total_cpu_ms"]}}
  md = markdown(timed, br, flops)
  print(f"{args.size} {args.dtype} S={args.seq} B={args.batch} P={args.preds}; load average "
        f"{os.getloadavg()[0]:.1f}\n\n{md}")
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"parts": timed, "breakdown": br, "flops_per_step": flops,
                 "load": os.getloadavg()}, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
