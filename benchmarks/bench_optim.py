"""The optimizer update alone: bertjax's clipping + AdamW against the same chain with
optax.clip_by_global_norm, over the weights of BERT-sized models.

One jitted update (global-norm clipping at 1.0, AdamW with the default config's decay mask and
schedule, apply_updates; params and state donated), timed per call after warm-up, both chains
interleaved in one process, the gradients large enough that clipping acts (as it does in most
fine-tuning steps). The update is memory-bound: its time sets a floor under every train step
that does not shrink with the batch. Same run, same machine: the ratio is the result.

Run: `python -m benchmarks.run optim`.
"""
from __future__ import annotations

import time

import numpy as np

SIZES = ("tiny", "minilm-l6")   # BERT-Tiny; all-MiniLM-L6-v2's shapes (6 x H=384)
REPEATS = 5                 # timed rounds per chain (median), interleaved
CALLS = 10                  # updates per round


def _params(size: str):
  import jax
  import jax.numpy as jnp
  from bertjax.config import model_config
  from bertjax.model import BertForPreTraining

  cfg = model_config("tiny" if size == "tiny" else "small", vocab_size=30522)
  if size == "minilm-l6":               # 6 layers of H=384, 12 heads, FFN 1536
    cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads = 6, 384, 12
    cfg.intermediate_size = 1536
  ids = jnp.zeros((1, 8), jnp.int32)
  shapes = jax.eval_shape(
      lambda k: BertForPreTraining(cfg).init(k, ids, ids, ids, ids[:, :2], deterministic=True),
      jax.random.PRNGKey(0))["params"]
  return jax.tree_util.tree_map(lambda s: jnp.full(s.shape, 0.01, s.dtype), shapes)


def _chains():
  import optax
  from bertjax.config import base_config
  from bertjax.optim import make_optimizer

  ocfg = base_config().optim
  ours, _ = make_optimizer(ocfg, 1000)
  plain = ocfg.copy_and_resolve_references()
  plain.clip_norm = 0.0
  adamw, _ = make_optimizer(plain, 1000)
  return {"bertjax": ours, "optax clip": optax.chain(optax.clip_by_global_norm(1.0), adamw)}


def _timer(tx, params):
  import jax
  import optax

  def update(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s
  step = jax.jit(update, donate_argnums=(0, 1))
  grads = jax.tree_util.tree_map(lambda p: p * 10.0, params)   # global norm >> 1: clipping acts
  box = [jax.tree_util.tree_map(lambda p: p.copy(), params), None]
  box[1] = tx.init(box[0])

  def timed() -> float:
    t0 = time.perf_counter()
    for _ in range(CALLS):
      box[0], box[1] = step(box[0], box[1], grads)
    jax.block_until_ready(box[0])
    return (time.perf_counter() - t0) / CALLS
  timed()                                                       # compile + warm-up
  return timed


def run(out_dir: str) -> dict:
  import jax
  rows, data = [], []
  for size in SIZES:
    params = _params(size)
    n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(params))
    timers = {name: _timer(tx, params) for name, tx in _chains().items()}
    times = {name: [] for name in timers}
    for _ in range(REPEATS):
      for name, t in timers.items():
        times[name].append(t())
    ms = {name: 1e3 * float(np.median(v)) for name, v in times.items()}
    ratio = ms["bertjax"] / ms["optax clip"]
    data.append({"size": size, "params": n, "ms_per_update": ms, "ratio": ratio})
    rows.append(f"| {size} ({n / 1e6:.1f}M weights) | {ms['bertjax']:.1f} | "
                f"{ms['optax clip']:.1f} | {ratio:.2f} |")
  md = "\n".join([
      f"Clipping (global norm 1.0, acting) + AdamW + apply, one jitted update, median of "
      f"{REPEATS} rounds of {CALLS} calls, both chains interleaved in one process on "
      f"{jax.devices()[0].platform}.", "",
      "| weights | bertjax ms | optax.clip_by_global_norm ms | ratio |", "|---|---:|---:|---:|",
      *rows])
  return {"title": "Optimizer update: clipping + AdamW", "markdown": md, "data": data}
