"""The stall a checkpoint save causes in a training loop: async vs synchronous saves.

A window of jitted AdamW updates over a BERT-sized train state (params + Adam moments + step +
key, the shapes of `BertForPreTraining` at the given size) saves once, after its first step,
through `bertjax.checkpoint.Checkpointer` with `async_save=True`, and again with False, beside
the same window without a save (interleaved, same process). Per save we report how long
`save()` blocked the loop and the window's total slowdown against the no-save window (which also
counts steps slowed by the background writer competing for CPU and memory bandwidth). Same run,
same machine: the ratio is the result.

Run: `python -m benchmarks.run checkpoint`.
"""
from __future__ import annotations

import os
import shutil
import statistics
import tempfile
import time

# size -> steps in the timed window (one save at its first step): enough steps for the
# background write to finish inside the window on a small CPU machine, as it would between
# real saves (every few hundred steps).
WINDOW = {"mini": 40, "base": 30}
REPEATS = 2         # median over repeats of each mode


def _state(size: str):
  import jax
  import jax.numpy as jnp
  import optax
  from bertjax.config import model_config
  from bertjax.model import BertForPreTraining

  cfg = model_config(size, vocab_size=30522)
  model = BertForPreTraining(cfg)
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(lambda k: model.init(k, ids, ids, ids, ids[:, :2], deterministic=True),
                          jax.random.PRNGKey(0))["params"]
  tx = optax.adamw(1e-4, weight_decay=0.01)

  @jax.jit
  def init():
    leaves, treedef = jax.tree.flatten(shapes)
    keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
    params = jax.tree.unflatten(treedef, [0.02 * jax.random.normal(k, s.shape, s.dtype)
                                          for k, s in zip(keys, leaves)])
    return {"params": params, "opt_state": tx.init(params), "step": jnp.int32(0),
            "rng": jax.random.PRNGKey(1)}

  def step(state):
    grads = jax.tree.map(lambda p: 1e-3 * p + 1e-4, state["params"])  # stand-in gradient
    updates, opt = tx.update(grads, state["opt_state"], state["params"])
    return {"params": optax.apply_updates(state["params"], updates), "opt_state": opt,
            "step": state["step"] + 1, "rng": state["rng"]}

  state = init()
  n = sum(x.size for x in jax.tree.leaves(state["params"]))
  nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))
  return state, jax.jit(step, donate_argnums=0), n, nbytes


def _window(state, step_fn, ckpt, steps: int, save_step: int):
  """Time `steps` training steps with one save after the first; returns
  (state, window seconds, seconds save() blocked, seconds the write outlived the window)."""
  import jax
  blocked = 0.0
  t0 = time.perf_counter()
  for i in range(steps):
    state = jax.block_until_ready(step_fn(state))
    if ckpt is not None and i == 0:
      tb = time.perf_counter()
      ckpt.save(save_step, state, None, force=True)
      blocked = time.perf_counter() - tb
  total = time.perf_counter() - t0
  tail = 0.0
  if ckpt is not None:
    tw = time.perf_counter()
    ckpt.wait()   # untimed: a real loop would keep training
    tail = time.perf_counter() - tw
  return state, total, blocked, tail


def run(out_dir: str) -> dict:
  import jax
  from bertjax.checkpoint import Checkpointer
  rows, data = [], {"repeats": REPEATS, "sizes": {}}
  for size in WINDOW:
    state, step_fn, n_params, nbytes = _state(size)
    steps = WINDOW[size]
    res = {m: {"total": [], "blocked": [], "tail": []} for m in ("none", "async", "sync")}
    wd = tempfile.mkdtemp(prefix=f"bench_ckpt_{size}_", dir=out_dir)
    ckpts = {"none": None,
             "async": Checkpointer(os.path.join(wd, "a"), every_steps=0, keep=1, async_save=True),
             "sync": Checkpointer(os.path.join(wd, "s"), every_steps=0, keep=1, async_save=False)}
    try:
      state = jax.block_until_ready(step_fn(state))  # compile
      for c in ckpts.values():                       # warm up: finite check compiles, dirs
        if c is not None:
          c.save(1, state, None, force=True)
          c.wait()
      for r in range(REPEATS):
        for mode, c in ckpts.items():
          state, total, blocked, tail = _window(state, step_fn, c, steps, save_step=2 + r)
          res[mode]["total"].append(total)
          res[mode]["blocked"].append(blocked)
          res[mode]["tail"].append(tail)
    finally:
      for c in ckpts.values():
        if c is not None:
          c.close()
      shutil.rmtree(wd, ignore_errors=True)
    base = statistics.median(res["none"]["total"])
    out = {"params": n_params, "state_bytes": nbytes, "window_steps": steps,
           "step_s": base / steps, "raw": res}
    for mode in ("async", "sync"):
      total = statistics.median(res[mode]["total"])
      out[mode] = {"window_s": total, "blocked_s": statistics.median(res[mode]["blocked"]),
                   "stall_s": max(total - base, 0.0),
                   "write_outlived_window_s": statistics.median(res[mode]["tail"])}
    out["blocked_ratio_sync_over_async"] = (out["sync"]["blocked_s"]
                                            / max(out["async"]["blocked_s"], 1e-9))
    out["stall_ratio_sync_over_async"] = (out["sync"]["stall_s"]
                                          / max(out["async"]["stall_s"], 1e-9))
    data["sizes"][size] = out
    rows.append(
        f"| {size} | {n_params / 1e6:.1f}M | {nbytes / 2**20:.0f} MiB | {out['step_s']:.3f} | "
        f"{out['async']['blocked_s']:.2f} | {out['sync']['blocked_s']:.2f} | "
        f"**{out['blocked_ratio_sync_over_async']:.1f}x** | "
        f"{out['async']['stall_s']:.2f} | {out['sync']['stall_s']:.2f} | "
        f"**{out['stall_ratio_sync_over_async']:.1f}x** | "
        f"{out['async']['write_outlived_window_s']:.1f} |")
    del state
  device = str(jax.devices()[0].platform)
  md = "\n".join([
      f"Jitted AdamW updates over a BERT-sized state ({device}); one save through "
      f"`bertjax.checkpoint.Checkpointer` (Orbax + manifest CRCs + NaN check) in a window of "
      f"training steps, median of {REPEATS} repeats. *Blocked*: time inside `save()`. "
      f"*Stall*: extra window time against the same window without a save (includes steps "
      f"slowed by the background writer sharing the CPU). *Outlived*: seconds the async write "
      f"went on after the window (not in the stall).",
      "",
      "| size | params | state | step s | blocked async s | blocked sync s | sync/async | "
      "stall async s | stall sync s | sync/async | outlived s |",
      "|---|---|---|---|---|---|---|---|---|---|---|",
      *rows,
  ])
  return {"title": "Checkpoint save stall: async vs synchronous", "markdown": md, "data": data}


if __name__ == "__main__":
  import json
  import sys
  print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()), indent=1))
