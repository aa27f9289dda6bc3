"""Is transfer real? SST-2 from a bertjax-pretrained encoder vs the same architecture at random.

    .venv/bin/python benchmarks/transfer_sst2.py --init runs/transfer/pretrain/export \\
        --out runs/transfer/sst2 --seeds 0,1,2

Both arms run `bertjax finetune --task sst2` with the same recipe, data subset, tokenizer (the
bundle's own) and seeds; the random arm takes the bundle's architecture (model_config.json) and
no weights. The verdict compares the gap in mean dev accuracy with the seed-to-seed spread
(max - min within each arm): transfer is shown when the worst pretrained seed beats the best
random seed. Results: OUT/transfer.json and a markdown table on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
ARCH = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "type_vocab_size")


def command(args, arm: str, seed: int, workdir: str) -> list[str]:
  cmd = [str(REPO / ".venv" / "bin" / "bertjax"), "finetune", "--task", "sst2",
         "--data", args.data, "--workdir", workdir, "--no-progress",
         f"--config.optim.learning_rate={args.lr}", f"--config.train.seed={seed}",
         f"--config.train.global_batch_size={args.batch}",
         f"--config.finetune.num_epochs={args.epochs}",
         f"--config.finetune.max_seq_length={args.seq}",
         f"--config.finetune.max_train_examples={args.max_train}",
         f"--config.model.dtype={args.dtype}", "--config.finetune.predict_test=false",
         "--config.checkpoint.every_steps=1000000"]
  if arm == "pretrained":
    return cmd + ["--init", args.init]
  # Random init: the bundle's architecture and tokenizer, no weights.
  with open(os.path.join(args.init, "model_config.json")) as f:
    model = json.load(f)
  with open(os.path.join(args.init, "bundle.json")) as f:
    bundle = json.load(f)
  tok = os.path.join(args.init, "tokenizer", bundle["tokenizer_file"])
  return cmd + [f"--config.model.{k}={model[k]}" for k in ARCH] + [
      f"--config.data.tokenizer={tok}",
      f"--config.data.do_lower_case={str(bundle.get('do_lower_case', True)).lower()}"]


def run_one(args, arm: str, seed: int) -> dict:
  workdir = os.path.join(args.out, f"{arm}_seed{seed}")
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = command(args, arm, seed, workdir)
  t0 = time.time()
  subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  with open(os.path.join(workdir, "eval_results.json")) as f:
    res = json.load(f)["results"]
  acc = next(iter(res.values()))["accuracy"]
  return {"arm": arm, "seed": seed, "accuracy": acc, "wall_s": time.time() - t0,
          "command": " ".join(cmd)}


def summarise(runs: list[dict]) -> dict:
  out = {}
  for arm in ("pretrained", "random"):
    accs = [r["accuracy"] for r in runs if r["arm"] == arm]
    if accs:
      out[arm] = {"accuracies": accs, "mean": statistics.mean(accs),
                  "spread": max(accs) - min(accs), "min": min(accs), "max": max(accs)}
  if len(out) == 2:
    p, r = out["pretrained"], out["random"]
    out["gap"] = p["mean"] - r["mean"]
    # One seed per arm has no spread to compare with: no verdict.
    enough = min(len(p["accuracies"]), len(r["accuracies"])) >= 2
    out["transfer_shown"] = (p["min"] > r["max"] and out["gap"] > max(p["spread"], r["spread"])
                             if enough else None)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--init", required=True, help="bertjax bundle (bertjax pretrain's export)")
  p.add_argument("--out", required=True)
  p.add_argument("--data", default=str((REPO / "../shared/data/glue/SST-2").resolve()))
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--arms", default="pretrained,random")
  p.add_argument("--max-train", type=int, default=8000)
  p.add_argument("--epochs", type=float, default=2.0)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--batch", type=int, default=32)
  p.add_argument("--lr", type=float, default=1e-4)
  p.add_argument("--dtype", default="bfloat16")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "transfer.json")
  record = json.load(open(path)) if os.path.exists(path) else {"runs": []}
  record["args"] = vars(args)
  for seed in [int(s) for s in args.seeds.split(",")]:
    for arm in args.arms.split(","):
      record["runs"] = [r for r in record["runs"] if (r["arm"], r["seed"]) != (arm, seed)]
      record["runs"].append(run_one(args, arm, seed))
      record["summary"] = summarise(record["runs"])
      json.dump(record, open(path, "w"), indent=1)
  s = record["summary"]
  print("| arm | seeds | dev accuracy per seed | mean | spread |\n|---|---|---|---|---|")
  for arm in ("pretrained", "random"):
    if arm in s:
      a = s[arm]
      print(f"| {arm} | {len(a['accuracies'])} | "
            + ", ".join(f"{x:.2f}" for x in a["accuracies"])
            + f" | {a['mean']:.2f} | {a['spread']:.2f} |")
  if "gap" in s:
    print(f"gap {s['gap']:.2f} points; transfer shown: {s['transfer_shown']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
