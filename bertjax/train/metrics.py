"""Training metrics: metrics.jsonl, TensorBoard event files (tensorboardX, no TensorFlow), PNG
curves, and the model-FLOPs utilisation. Only process 0 writes.

metrics.jsonl holds one JSON object per logged or evaluated step: training entries (loss,
mlm_loss, mlm_acc, nsp_loss, nsp_acc, lr, grad_norm, seq_per_s, tokens_per_s, mfu, ...) and
held-out entries prefixed `eval_`. On resume, entries past the resumed step (written by the
run that was interrupted) are dropped, so the file reads as one uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
from typing import Optional

import jax

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"

# Peak dense bf16 FLOP/s per device, for MFU; device_kind substrings (lower case) -> FLOP/s.
PEAK_FLOPS = {
    "v6": 918e12, "v5p": 459e12, "v5 lite": 197e12, "v5e": 197e12, "v4": 275e12,
    "h200": 989e12, "h100": 989e12, "a100": 312e12, "l4": 121e12,
}


def peak_flops_per_device(override_tflops: float = 0.0) -> Optional[float]:
  """From train.peak_tflops when set, else the device-kind table; None on CPU / unknown."""
  if override_tflops > 0:
    return override_tflops * 1e12
  kind = jax.devices()[0].device_kind.lower()
  for key, flops in PEAK_FLOPS.items():
    if key in kind:
      return flops
  return None


def bert_pretraining_flops(model_cfg, batch: int, seq: int, preds: int,
                           last_layer_queries: int = 0) -> float:
  """Model FLOPs of one training step (forward + backward = 3 x forward) of BertForPreTraining.

  Per token and layer: 2 x (4H^2 attention projections + 2HI FFN) matmul FLOPs + 4SH for the
  scores and context; the MLM head runs only on P positions per sequence (H^2 + HV).
  last_layer_queries Q > 0: the last layer runs at Q positions per sequence only (a head that
  reads only [CLS], BertEncoder's query_positions): keys and values at all S, the query,
  attention output, FFN, scores and context at Q.
  """
  h, i, v, l = (model_cfg.hidden_size, model_cfg.intermediate_size, model_cfg.vocab_size,
                model_cfg.num_hidden_layers)
  kv = 2 * 2 * h * h                                     # per token: key and value projections
  rest = 2 * (2 * h * h + 2 * h * i) + 4 * seq * h       # per query: Q, output, FFN, attention
  full = l * seq * (kv + rest)                                        # per sequence
  q = last_layer_queries
  encoder = full - (seq - q) * rest if q else full
  head = preds * 2 * (h * h + h * v) + 2 * h * h + 2 * h * 2   # per sequence, + pooler + NSP
  return 3.0 * batch * (encoder + head)


class MetricsWriter:
  """Appends records to WORKDIR/metrics.jsonl and TensorBoard (WORKDIR/tb) on process 0."""

  def __init__(self, workdir: str, start_step: int = 0):
    self.enabled = jax.process_index() == 0
    self.path = os.path.join(workdir, METRICS_FILE)
    self.tb = None
    if not self.enabled:
      return
    if os.path.isfile(self.path):  # keep only what the resumed run has already done
      with open(self.path) as f:
        lines = [ln for ln in f if ln.strip() and json.loads(ln)["step"] <= start_step]
      with open(self.path + ".tmp", "w") as f:
        f.writelines(lines)
      os.replace(self.path + ".tmp", self.path)
    from tensorboardX import SummaryWriter
    self.tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=start_step + 1)
    self.file = open(self.path, "a")

  def write(self, step: int, record: dict) -> None:
    if not self.enabled:
      return
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
             for k, v in record.items()}
    self.file.write(json.dumps({"step": int(step), **clean}) + "\n")
    self.file.flush()
    for k, v in record.items():
      if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
        tag = ("eval/" + k[5:]) if k.startswith("eval_") else ("train/" + k)
        self.tb.add_scalar(tag, v, step)

  def close(self) -> None:
    if self.enabled:
      self.file.close()
      self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.isfile(path):
    return []
  with open(path) as f:
    return [json.loads(ln) for ln in f if ln.strip()]


def curve_panels(records: list[dict]) -> list[tuple[str, list[str]]]:
  """The curves' four panels (title, metric keys) from the keys the records hold: pretraining
  logs mlm_/nsp_ losses and accuracies, fine-tuning its loss, accuracy and eval_<metric>
  (accuracy, f1, mcc, exact_match, pearson ...)."""
  keys = sorted({k for r in records for k, v in r.items()
                 if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)})
  losses = [k for k in keys if k == "loss" or k.endswith("_loss")]
  speed = {"lr", "seq_per_s", "tokens_per_s", "grad_norm", "mfu"}
  scores = [k for k in keys if k not in losses and k not in speed and not k.endswith("_weight")]
  return [("loss", losses), ("accuracy / eval metrics", scores), ("learning rate", ["lr"]),
          ("sequences / s", ["seq_per_s"])]


def plot(workdir: str, out: Optional[str] = None) -> str:
  """Loss, accuracy, learning rate and throughput curves of a workdir -> PNG path."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from bertjax.errors import UserError
  records = read_metrics(workdir)
  if not records:
    raise UserError(f"{os.path.join(workdir, METRICS_FILE)}: no metrics; run bertjax pretrain "
                    f"with --workdir {workdir} first")
  out = out or os.path.join(workdir, PLOT_FILE)

  def series(key):
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [p[0] for p in pts], [p[1] for p in pts]

  panels = curve_panels(records)
  scores = panels[1][1]
  fig, axes = plt.subplots(1, 4, figsize=(14, 3.2))
  for ax, (title, panel_keys) in zip(axes, panels):
    drawn = 0
    for k in panel_keys:
      xs, ys = series(k)
      label = k
      if panel_keys is scores and ys and max(abs(y) for y in ys) <= 1.0 and any(
          max((abs(y) for y in series(o)[1]), default=0) > 1.0 for o in scores):
        ys, label = [100 * y for y in ys], f"{k} (x100)"  # fractions beside eval percentages
      if xs:
        ax.plot(xs, ys, label=label, marker="o" if k.startswith("eval_") else None, markersize=3)
        drawn += 1
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    if drawn > 1:
      ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(out, dpi=72)
  plt.close(fig)
  return out
