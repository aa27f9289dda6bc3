"""How high can MFU go on this machine? The train step's matmuls alone, against the real step.

Run: `python -m benchmarks.matmul_bound` (L4/H256, S=128, B=32, P=20, bf16; `--size base`,
`--seq`, `--batch`, `--repeats`, `--json FILE`, or `--json -` for a last JSON line); `make bench`
runs it in its training section.

The "matmul skeleton" is the pretraining step with everything but its matmuls removed: the same
parameter shapes and the same `bertjax.model.matmul` calls (bf16 operands, f32 accumulation,
the custom bf16 backward) in the same order -- Q/K/V/output projections, attention scores and
context, FFN in/out per layer, the MLM transform and the tied [V, H] decoder at P positions --
with no softmax, LayerNorm, GELU, dropout, bias, loss or optimizer. Its forward + backward is
therefore the fastest a step of this model could be with XLA:CPU's matmul kernels, and its MFU
is an upper bound on the real step's MFU. Both are timed interleaved in one process (median of
`--repeats`), beside the bf16 matmul peak (benchmarks/peak.py) measured in the same process.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def skeleton_loss(params, x, r, c):
  """Sum of (decoder logits * r): the model's matmul chain; x [B, S, H], r [B, P, V] f32."""
  import jax.numpy as jnp
  from bertjax.model import dtype_of, matmul
  dt = dtype_of(c)
  b, s, h = x.shape
  n = c.num_attention_heads
  x = x.astype(dt)
  for lp in params["layers"]:
    q, k, v = (matmul("bsh,hk->bsk", x, lp[w], c).astype(dt).reshape(b, s, n, h // n)
               for w in ("q", "k", "v"))                                        # [B, S, N, D]
    scores = matmul("bqnd,bknd->bnqk", q, k, c).astype(dt)                     # [B, N, S, S]
    ctx = matmul("bnqk,bknd->bqnd", scores, v, c).astype(dt).reshape(b, s, h)  # [B, S, H]
    a = matmul("bsh,hk->bsk", ctx, lp["o"], c).astype(dt)                      # [B, S, H]
    f = matmul("bsh,hi->bsi", a, lp["i"], c).astype(dt)                        # [B, S, I]
    x = matmul("bsi,ih->bsh", f, lp["out"], c).astype(dt)                      # [B, S, H]
  p = r.shape[1]
  t = matmul("bph,hk->bpk", x[:, :p], params["transform"], c).astype(dt)     # [B, P, H]
  logits = matmul("bph,hv->bpv", t, params["word"].T, c)                     # [B, P, V] f32
  return jnp.sum(logits * r)


def init_skeleton(c, batch: int, seq: int, preds: int):
  import jax
  import jax.numpy as jnp
  h, i, v = c.hidden_size, c.intermediate_size, c.vocab_size
  keys = iter(jax.random.split(jax.random.key(0), 8 * c.num_hidden_layers + 8))
  w = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)  # noqa: E731
  params = {"layers": [{"q": w(h, h), "k": w(h, h), "v": w(h, h), "o": w(h, h), "i": w(h, i),
                        "out": w(i, h)} for _ in range(c.num_hidden_layers)],
            "transform": w(h, h), "word": w(v, h)}
  x = w(batch, seq, h)              # the embedding output: its gradient is computed, as in the model
  r = w(batch, preds, v)            # a fixed cotangent, so no matmul folds into a reduction
  return params, x, r


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--size", default="mini")
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--preds", type=int, default=20)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--json", default="")
  args = p.parse_args(argv)

  import jax
  from benchmarks import peak as peak_lib
  from benchmarks.profile_step import build
  from bertjax.train.metrics import bert_pretraining_flops

  cfg, task, tx, state, batch, step = build(args.size, "bfloat16", args.seq, args.batch, args.preds)
  c = cfg.model
  params, x, r = init_skeleton(c, args.batch, args.seq, args.preds)
  skel = jax.jit(jax.value_and_grad(lambda p, x: skeleton_loss(p, x, r, c), argnums=(0, 1)))
  run = {"train step": lambda: step(state, batch),
         "matmul skeleton (fwd + bwd)": lambda: skel(params, x)}
  for f in run.values():
    jax.block_until_ready(f())                   # compile + warm up
  times = {k: [] for k in run}
  peaks = [peak_lib.measure("bfloat16", repeats=3)["gflops"]]
  for _ in range(args.repeats):                  # interleaved: load changes hit both alike
    for k, f in run.items():
      t = time.perf_counter()
      jax.block_until_ready(f())
      times[k].append(time.perf_counter() - t)
  peaks.append(peak_lib.measure("bfloat16", repeats=3)["gflops"])
  peak = max(peaks)
  flops = bert_pretraining_flops(c, args.batch, args.seq, args.preds)
  rows = {}
  for k, ts in times.items():
    med = statistics.median(ts)
    rows[k] = {"ms": med * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3,
               "seq_per_s": args.batch / med, "gflops": flops / med / 1e9,
               "mfu": flops / med / 1e9 / peak}
  step_ms = rows["train step"]["ms"]
  out = {"config": f"{args.size} S={args.seq} B={args.batch} P={args.preds} bf16",
         "model_gflop_per_step": flops / 1e9, "bf16_peak_gflops": peak, "rows": rows,
         "matmul_share_of_step": rows["matmul skeleton (fwd + bwd)"]["ms"] / step_ms}
  print(f"{out['config']}: {flops / 1e9:.1f} model GFLOP per step; bf16 matmul peak "
        f"{peak:.0f} GFLOP/s (best of the measurements before and after)")
  print("| part | ms (min-max) | seq/s | GFLOP/s | MFU |\n|---|---|---|---|---|")
  for k, v in rows.items():
    print(f"| {k} | {v['ms']:.0f} ({v['min_ms']:.0f}-{v['max_ms']:.0f}) | {v['seq_per_s']:.1f}"
          f" | {v['gflops']:.0f} | {100 * v['mfu']:.1f}% |")
  print(f"matmuls alone take {100 * out['matmul_share_of_step']:.0f}% of the step's time; "
        f"with everything else free the step would reach "
        f"{100 * rows['matmul skeleton (fwd + bwd)']['mfu']:.1f}% MFU")
  if args.json == "-":
    print(json.dumps(out))  # one line, last: benchmarks/bench_train.py reads it
  elif args.json:
    with open(args.json, "w") as f:
      json.dump(out, f, indent=1)
  return 0


if __name__ == "__main__":
  sys.exit(main())
