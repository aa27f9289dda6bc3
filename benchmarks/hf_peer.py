"""The peer: transformers' BertForPreTraining (PyTorch) training steps on the same config/batch.

Runs in its own environment (.venv-peer: torch CPU + transformers, no JAX), as a subprocess of
bench_train.py, and prints one JSON line. One step = forward (MLM + NSP loss, dropout on),
backward, AdamW update: the same work as bertjax's train step, except that transformers scores
every position ([B, S, V] logits) where bertjax scores only the P masked ones.

  .venv-peer/bin/python benchmarks/hf_peer.py --layers 4 --hidden 256 --heads 4 \
      --seq 128 --batch 32 --preds 20 --precision bf16 --steps 5
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import time


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--layers", type=int, default=4)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--vocab", type=int, default=30522)
  p.add_argument("--seq", type=int, default=128)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--preds", type=int, default=20, help="masked positions per sequence")
  p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                 help="bf16 = torch.autocast(cpu, bfloat16) around forward and loss")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=2)
  a = p.parse_args()

  import numpy as np
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  cfg = transformers.BertConfig(
      vocab_size=a.vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
      num_attention_heads=a.heads, intermediate_size=4 * a.hidden, max_position_embeddings=512,
      hidden_act="gelu", attn_implementation="sdpa")
  model = transformers.BertForPreTraining(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)

  rng = np.random.default_rng(0)
  ids = torch.from_numpy(rng.integers(0, a.vocab, (a.batch, a.seq))).long()
  labels = torch.full((a.batch, a.seq), -100, dtype=torch.long)
  for i in range(a.batch):  # P distinct masked positions per row, labelled
    pos = rng.choice(a.seq, a.preds, replace=False)
    labels[i, pos] = torch.from_numpy(rng.integers(0, a.vocab, a.preds)).long()
  batch = dict(input_ids=ids, token_type_ids=torch.zeros_like(ids),
               attention_mask=torch.ones_like(ids), labels=labels,
               next_sentence_label=torch.from_numpy(rng.integers(0, 2, a.batch)).long())

  def step() -> float:
    opt.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
      loss = model(**batch).loss
    loss.backward()
    opt.step()
    return float(loss.detach())

  for _ in range(a.warmup):
    step()
  times = []
  for _ in range(a.steps):
    t = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - t)
  print(json.dumps({
      "impl": "transformers", "precision": a.precision, "torch": torch.__version__,
      "transformers": transformers.__version__, "threads": torch.get_num_threads(),
      "step_s": times, "loss": loss,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


if __name__ == "__main__":
  main()
