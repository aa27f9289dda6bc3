"""Is transfer real? SST-2 from a bertjax-pretrained encoder vs the same architecture at random.

    .venv/bin/python benchmarks/transfer_sst2.py --init runs/transfer/pretrain/export \\
        --out runs/transfer/sst2 --seeds 0,1,2

Both arms run `bertjax finetune --task sst2` with the same recipe, data subset, tokenizer (the
bundle's own) and seeds; the random arm takes the bundle's architecture (model_config.json) and
no weights. The verdict compares the gap in mean dev accuracy with the seed-to-seed spread
(max - min within each arm): transfer is shown when the worst pretrained seed beats the best
random seed. Results: OUT/transfer.json and a markdown table on stdout.

With --select-lrs 1e-4,3e-4,1e-3 each arm first picks its learning rate by seed-0 accuracy on
rows held out from the END of SST-2 train (disjoint from the --max-train rows trained on), so
dev is only read by the final seeded runs.
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


def command(args, arm: str, seed: int, workdir: str, lr: float, data: str) -> list[str]:
  cmd = [str(REPO / ".venv" / "bin" / "bertjax"), "finetune", "--task", "sst2",
         "--data", data, "--workdir", workdir, "--no-progress",
         f"--config.optim.learning_rate={lr}", f"--config.train.seed={seed}",
         f"--config.train.global_batch_size={args.batch}",
         f"--config.finetune.num_epochs={args.epochs}",
         f"--config.finetune.max_seq_length={args.seq}",
         f"--config.finetune.max_train_examples={args.max_train}",
         f"--config.model.dtype={args.dtype}", "--config.finetune.predict_test=false",
         "--config.checkpoint.every_steps=1000000"] + [f"--config.{kv}" for kv in args.set]
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


def run_one(args, arm: str, seed: int, lr: float, data: str | None = None,
            name: str | None = None) -> dict:
  workdir = os.path.join(args.out, name or f"{arm}_seed{seed}")
  shutil.rmtree(workdir, ignore_errors=True)
  cmd = command(args, arm, seed, workdir, lr, data or args.data)
  t0 = time.time()
  subprocess.run(cmd, check=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  with open(os.path.join(workdir, "eval_results.json")) as f:
    res = json.load(f)["results"]
  acc = next(iter(res.values()))["accuracy"]
  return {"arm": arm, "seed": seed, "lr": lr, "accuracy": acc, "wall_s": time.time() - t0,
          "command": " ".join(cmd)}


def selection_data(args) -> str:
  """SST-2's train split cut in two disjoint parts for choosing the learning rate without
  looking at dev: train.tsv = the first --max-train rows (the rows every run trains on),
  dev.tsv = the last --select-holdout rows."""
  with open(os.path.join(args.data, "train.tsv"), encoding="utf-8") as f:
    header, *rows = f.readlines()
  if args.max_train + args.select_holdout > len(rows):
    raise SystemExit(f"--max-train {args.max_train} + --select-holdout {args.select_holdout} "
                     f"exceeds the {len(rows)} rows of {args.data}/train.tsv")
  out = os.path.join(args.out, "select_data")
  os.makedirs(out, exist_ok=True)
  for name, part in (("train.tsv", rows[:args.max_train]),
                     ("dev.tsv", rows[-args.select_holdout:])):
    with open(os.path.join(out, name), "w", encoding="utf-8") as f:
      f.writelines([header, *part])
  return out


def choose_lrs(args, record: dict) -> dict[str, float]:
  """Per arm, the learning rate with the best seed-0 accuracy on the held-out train slice
  (each arm gets its own: a randomly initialised encoder may want a different one)."""
  lrs = [float(x) for x in args.select_lrs.split(",")]
  data = selection_data(args)
  sel = record.setdefault("selection", {})
  chosen = {}
  for arm in args.arms.split(","):
    scores = sel.setdefault(arm, {})
    for lr in lrs:
      if str(lr) not in scores:
        r = run_one(args, arm, 0, lr, data, name=f"select_{arm}_lr{lr:g}")
        scores[str(lr)] = r["accuracy"]
        json.dump(record, open(os.path.join(args.out, "transfer.json"), "w"), indent=1)
    chosen[arm] = max(lrs, key=lambda lr: scores[str(lr)])
    print(f"[select] {arm}: " + ", ".join(f"lr {lr:g} -> {scores[str(lr)]:.2f}" for lr in lrs)
          + f"; chosen {chosen[arm]:g}", flush=True)
  record["chosen_lr"] = chosen
  return chosen


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
  p.add_argument("--lr", type=float, default=1e-4, help="both arms' learning rate, unless "
                 "--select-lrs picks one per arm")
  p.add_argument("--select-lrs", default="",
                 help="comma list of learning rates; each arm takes the one with the best "
                      "seed-0 accuracy on a held-out slice of SST-2 train (never dev)")
  p.add_argument("--select-holdout", type=int, default=2000,
                 help="rows from the end of train.tsv used to choose the learning rate")
  p.add_argument("--dtype", default="bfloat16")
  p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="extra config for both arms, e.g. --set finetune.freeze=encoder (a linear "
                      "probe of the encoder's features)")
  args = p.parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  path = os.path.join(args.out, "transfer.json")
  record = json.load(open(path)) if os.path.exists(path) else {"runs": []}
  record["args"] = vars(args)
  lrs = (choose_lrs(args, record) if args.select_lrs
         else {arm: args.lr for arm in args.arms.split(",")})
  for seed in [int(s) for s in args.seeds.split(",")]:
    for arm in args.arms.split(","):
      record["runs"] = [r for r in record["runs"] if (r["arm"], r["seed"]) != (arm, seed)]
      record["runs"].append(run_one(args, arm, seed, lrs[arm]))
      record["summary"] = summarise(record["runs"])
      json.dump(record, open(path, "w"), indent=1)
  s = record["summary"]
  print("| arm | lr | seeds | dev accuracy per seed | mean | spread |\n|---|---|---|---|---|---|")
  for arm in ("pretrained", "random"):
    if arm in s:
      a = s[arm]
      print(f"| {arm} | {lrs.get(arm, args.lr):g} | {len(a['accuracies'])} | "
            + ", ".join(f"{x:.2f}" for x in a["accuracies"])
            + f" | {a['mean']:.2f} | {a['spread']:.2f} |")
  if "gap" in s:
    print(f"gap {s['gap']:.2f} points; transfer shown: {s['transfer_shown']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
