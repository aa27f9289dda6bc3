"""BERT-2018's pretraining recipe against the MLM recipe, at an equal wall-clock budget.

BERT-2018 (configs/pretrain_bert2018.py): NSP segment pairs, 15% masking, dropout 0.1, linear
decay. The MLM recipe (configs/pretrain_demo.py): rows packed from the document stream, 30%
masking, no dropout (fused attention), warmup-stable-decay, 16-token rows for the first quarter
of the steps (train.phase2_fraction), then 128. For each model size (tiny, mini: the
model fields overridden with --config.model.*) each recipe runs `bertjax pretrain` with
--config.train.budget_minutes=M, one run after the other, on one prepared corpus (the bundled
data/corpus, prepared once and shared through data.prepared_dir, so both hold out the same
documents). Each finished run is then scored the same way by bertjax.train.score: its latest
checkpoint on the MLM objective's packed held-out rows at S=128, 15% masking, the same seed
and batch count, so both models see the same masked tokens.

Equal budget: budget_minutes sets train.num_steps from step times measured at the run's own
shapes (both phases' for the MLM recipe). BERT-2018's second phase (S=256 from step 560) ran
steps that measurement did not time when this benchmark was written (about twice as slow), so
here it trains one phase at S=128 (train.phase2_start=0), as in the earlier rows. Periodic
evaluation is off (train.eval_every=0) and checkpoints are kept to the final one, so neither run
spends its budget on anything else; the one evaluation after the last step is not part of the
budget.

Reported per run: held-out MLM loss / accuracy, real (non-pad) tokens per second of the train
steps (metrics.jsonl's token rate x (1 - padding)), the padding fraction of the first 20
training batches, steps, the measured step time and the process's wall time.

Run (about 4 x M minutes of training plus compiles; M=5 by default):
  .venv/bin/python -m benchmarks.run recipes
Environment: BENCH_RECIPE_MINUTES (5), BENCH_RECIPE_SIZES ("tiny,mini"),
BENCH_RECIPE_EVAL_BATCHES (8 batches of 32 rows: the held-out documents about once).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {  # name -> (config, overrides that make the budget cover the whole run)
    "bert2018": ("configs/pretrain_bert2018.py", ["--config.train.phase2_start=0"]),
    "mlm": ("configs/pretrain_demo.py", []),
}
COMMON = ["--no-progress", "--no-export", "--config.train.eval_every=0",
          "--config.checkpoint.every_steps=0"]
SCORE_RATE = 0.15
SCORE_SEED = 0
SCORE_BATCH = 32
PAD_BATCHES = 20


def _env(name: str, default):
  return type(default)(os.environ.get(f"BENCH_RECIPE_{name}", default))


def size_overrides(size: str) -> list[str]:
  from bertjax.config import model_config
  m = model_config(size)
  return [f"--config.model.{k}={m[k]}" for k in
          ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")]


def pretrain_cmd(recipe: str, size: str, workdir: str, prepared: str, minutes: float) -> list[str]:
  config, extra = RECIPES[recipe]
  return ([sys.executable, "-m", "bertjax.cli", "pretrain", "--config", config,
           "--workdir", workdir] + COMMON + extra + size_overrides(size) +
          [f"--config.train.budget_minutes={minutes:g}",
           f"--config.data.prepared_dir={prepared}"])


def run_one(recipe: str, size: str, root: str, prepared: str, minutes: float,
            eval_batches: int) -> dict:
  """Train one (size, recipe) in a fresh workdir, then score it; -> its row."""
  from bertjax.config import load_config
  from bertjax.train import score
  workdir = os.path.join(root, f"{size}-{recipe}")
  shutil.rmtree(workdir, ignore_errors=True)
  os.makedirs(workdir)
  cmd = pretrain_cmd(recipe, size, workdir, prepared, minutes)
  t0 = time.time()
  with open(os.path.join(workdir, "log.txt"), "w") as log:
    rc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
  wall = time.time() - t0
  if rc != 0:
    tail = open(os.path.join(workdir, "log.txt")).read()[-2000:]
    raise RuntimeError(f"{' '.join(cmd)} exited {rc}:\n{tail}")
  with open(os.path.join(workdir, "budget.json")) as f:
    budget = json.load(f)
  cfg = load_config(os.path.join(REPO, RECIPES[recipe][0]),
                    [a for a in cmd if a.startswith("--config.")])
  cwd = os.getcwd()
  os.chdir(REPO)   # the configs' corpus and tokenizer paths are relative to the repository
  try:
    held = score.score_heldout(workdir, prepared, masked_lm_prob=SCORE_RATE,
                               eval_batches=eval_batches, seed=SCORE_SEED,
                               batch_size=SCORE_BATCH)
    pad = score.train_padding_fraction(cfg, prepared, batches=PAD_BATCHES)
  finally:
    os.chdir(cwd)
  slots_per_s = score.train_token_rate(workdir)
  return {"size": size, "recipe": recipe, "steps": held["step"],
          "step_s": budget["step_seconds"], "wall_s": round(wall, 1),
          "heldout_mlm_loss": held["mlm_loss"], "heldout_mlm_acc": held["mlm_acc"],
          "scored_tokens": held["masked_tokens"], "padding_fraction": pad,
          "real_tokens_per_s": slots_per_s * (1.0 - pad),
          "command": " ".join(cmd).replace(sys.executable, "python").replace(root + "/", "")}


def markdown(rows: list[dict], minutes: float, eval_batches: int) -> str:
  lines = [f"Each run: `bertjax pretrain` with train.budget_minutes={minutes:g} on the bundled "
           f"data/corpus (one prepared copy); scored on the same held-out documents: the MLM "
           f"objective's packed S=128 rows, {SCORE_RATE:.0%} masking, seed {SCORE_SEED}, "
           f"{eval_batches} batches of {SCORE_BATCH} rows. BERT-2018 trains one phase at S=128 "
           f"(train.phase2_start=0); the MLM recipe's budget times both of its phases' steps "
           f"(S=16, then S=128); periodic evaluation off for both.", "",
           "| size | recipe | steps | step s (probe) | wall s | held-out MLM loss | "
           "held-out MLM acc | real tokens/s | padding |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    # a two-phase budget times each phase's step: "phase 1 / phase 2" seconds
    step_s = r["step_s"] if isinstance(r["step_s"], list) else [r["step_s"]]
    step_s = " / ".join(f"{v:.3f}" for v in step_s)
    lines.append(f"| {r['size']} | {r['recipe']} | {r['steps']} | {step_s} | "
                 f"{r['wall_s']:.0f} | {r['heldout_mlm_loss']:.3f} | {r['heldout_mlm_acc']:.3f} | "
                 f"{r['real_tokens_per_s']:.0f} | {r['padding_fraction']:.2%} |")
  lines.append("")
  for size in dict.fromkeys(r["size"] for r in rows):
    by = {r["recipe"]: r for r in rows if r["size"] == size}
    if len(by) == 2:
      old, new = by["bert2018"], by["mlm"]
      lines.append(f"- {size}: MLM recipe's held-out loss {new['heldout_mlm_loss']:.3f} vs "
                   f"BERT-2018's {old['heldout_mlm_loss']:.3f} "
                   f"({'below' if new['heldout_mlm_loss'] < old['heldout_mlm_loss'] else 'NOT below'}"
                   f"); packed padding {new['padding_fraction']:.2%} "
                   f"({'below' if new['padding_fraction'] < 0.01 else 'NOT below'} 1%), "
                   f"BERT-2018's pairs {old['padding_fraction']:.2%}")
  lines.append("")
  lines.append("Commands (from the repository root; WORKDIR and PREPARED under benchmarks/out/"
               "recipes):")
  lines += [f"- `{r['command']}`" for r in rows]
  return "\n".join(lines)


def run(out_dir: str) -> dict:
  minutes = _env("MINUTES", 5.0)
  sizes = [s.strip() for s in _env("SIZES", "tiny,mini").split(",") if s.strip()]
  eval_batches = _env("EVAL_BATCHES", 8)
  root = os.path.join(os.path.abspath(out_dir), "recipes")
  prepared = os.path.join(root, "prepared")  # kept between runs: preparing is not the subject
  os.makedirs(root, exist_ok=True)
  rows = [run_one(recipe, size, root, prepared, minutes, eval_batches)
          for size in sizes for recipe in RECIPES]
  return {"title": f"Pretraining recipes at an equal wall-clock budget ({minutes:g} min): "
                   f"BERT-2018 vs MLM", "markdown": markdown(rows, minutes, eval_batches),
          "data": {"minutes": minutes, "sizes": sizes, "score_masked_lm_prob": SCORE_RATE,
                   "score_seed": SCORE_SEED, "score_batch": SCORE_BATCH,
                   "eval_batches": eval_batches, "rows": rows}}
