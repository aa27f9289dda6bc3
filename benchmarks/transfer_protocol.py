"""The fixed decisions of docs/transfer_protocol.md (issue #18) and its data split and verdict.

Pure Python (no JAX, no subprocess): benchmarks/transfer.py runs the stages with these. SST-2
train rows are taken in file order; the LAST `SLICE_ROWS` rows choose learning rates and are
kept out of every training set and of the pretraining text; dev is read only by seeded runs.
"""
from __future__ import annotations

import os
import statistics

from bertjax.errors import UserError

SLICE_ROWS = 2000
SIZES = {"1000": 1000, "8000": 8000, "all": None}       # None: every row except the slice
EPOCHS = {"1000": 10, "8000": 3, "all": 1}
FULL_LRS = (1e-4, 3e-4, 1e-3)
PROBE_LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)
BATCH, SEQ = 32, 64
# MiniLM: continued MLM pretraining on the SST-2 text (TAPT), then N=1,000 only (CPU cost)
MINILM_N, MINILM_EPOCHS, MINILM_LRS = "1000", 3, (2e-5, 5e-5, 1e-4)
TAPT_STEPS, TAPT_LR, TAPT_SEQ, TAPT_HELDOUT = 300, 1e-4, 64, 0.01
SST2_TEXT = "sst2_train_text.txt"                     # the runner's extra corpus file
# Protocol 2: LP-FT (the linear probe, then full fine-tuning from it, same seed) at rates one
# notch below protocol 1's full fine-tuning grid
LPFT_LRS = (3e-5, 1e-4, 3e-4)


def read_train(sst2_dir: str) -> tuple[str, list[str]]:
  """SST-2 train.tsv -> (header line, data lines in file order, newlines kept)."""
  path = os.path.join(sst2_dir, "train.tsv")
  if not os.path.isfile(path):
    raise UserError(f"{path}: not found; pass --sst2 the GLUE SST-2 folder")
  with open(path, encoding="utf-8") as f:
    header, *rows = f.readlines()
  if header.split("\t")[0].strip() != "sentence":
    raise UserError(f"{path}: expected the GLUE header 'sentence<TAB>label', got {header!r}")
  return header, [r if r.endswith("\n") else r + "\n" for r in rows if r.strip()]


def sentence(row: str) -> str:
  """A train.tsv line without its label (GLUE: sentence TAB label, no quoting)."""
  return " ".join(row.rsplit("\t", 1)[0].split())


def split_rows(rows: list[str], slice_rows: int = SLICE_ROWS) -> dict[str, list[str]]:
  """{"slice": the last slice_rows rows, "1000" / "8000": the first N rows, "all": every row
  but the slice}; an N set that would reach into the slice is an error."""
  keep = len(rows) - slice_rows
  if keep <= 0:
    raise UserError(f"SST-2 train has {len(rows)} rows, not more than the {slice_rows}-row "
                    f"selection slice")
  out = {"slice": rows[keep:]}
  for name, n in SIZES.items():
    if n is not None and n > keep:
      raise UserError(f"N={n} reaches into the selection slice ({len(rows)} rows, the last "
                      f"{slice_rows} held out)")
    out[name] = rows[:keep if n is None else n]
  return out


def pretrain_sentences(rows: list[str], slice_rows: int = SLICE_ROWS) -> list[str]:
  """SST-2 train's sentences, labels dropped, in file order, without the slice: a sentence
  string that occurs in the slice is left out wherever it occurs."""
  sets = split_rows(rows, slice_rows)
  held = {sentence(r) for r in sets["slice"]}
  return [s for s in map(sentence, sets["all"]) if s and s not in held]


def _write_if_changed(path: str, text: str) -> None:
  """Unchanged files keep their mtime: the prepared corpus (fingerprinted by mtime) and the
  runs that read them stay valid when the runner is started again."""
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      if f.read() == text:
        return
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(path + ".tmp", path)


def write_sets(sst2_dir: str, out_dir: str, slice_rows: int = SLICE_ROWS) -> dict:
  """OUT/data/{train_1000,train_8000,train_all,slice}.tsv (header kept) and the pretraining
  sentence file (`bert` format: one sentence per line, a blank line between, so each is its own
  document) -> {name: {"path", "rows"}}."""
  header, rows = read_train(sst2_dir)
  os.makedirs(out_dir, exist_ok=True)
  out = {"train_rows": len(rows)}
  for name, part in split_rows(rows, slice_rows).items():
    path = os.path.join(out_dir, f"{'slice' if name == 'slice' else 'train_' + name}.tsv")
    _write_if_changed(path, header + "".join(part))
    out[name] = {"path": os.path.abspath(path), "rows": len(part)}
  sents = pretrain_sentences(rows, slice_rows)
  path = os.path.join(out_dir, SST2_TEXT)
  _write_if_changed(path, "\n\n".join(sents) + "\n")
  out["pretrain_text"] = {"path": os.path.abspath(path), "sentences": len(sents)}
  return out


def verdict(a: list[float], b: list[float]) -> dict:
  """gap = mean(a) - mean(b); spread = the larger (max - min over seeds) of the two arms;
  shown when gap > spread. Fewer than two seeds in an arm: no spread, no verdict (None)."""
  if not a or not b:
    return {"gap": None, "spread": None, "shown": None}
  gap = statistics.mean(a) - statistics.mean(b)
  spread = max(max(a) - min(a), max(b) - min(b))
  return {"gap": gap, "spread": spread,
          "shown": (gap > spread) if min(len(a), len(b)) >= 2 else None}


def choose_lr(scores: dict[float, float]) -> float:
  """The learning rate with the best selection accuracy; a tie goes to the smaller rate."""
  lrs = sorted(scores)
  best = lrs[0]
  for lr in lrs[1:]:
    if scores[lr] > scores[best]:
      best = lr
  return best


def best_of(rows: dict, stages: tuple[str, ...]) -> dict:
  """Protocol 3's row: per arm, the stage whose chosen rate (`choose_lr`, already in the row)
  has the best seed-0 selection accuracy (ties: the earlier stage), that stage's seeded dev
  runs as the arm; the verdict of the first arm against the second. rows: the runner's rows
  ({stage: {"selection": {arm: {lr: {"accuracy"}}}, "chosen_lr": {arm: lr}, "runs": [...]}})."""
  arms = list(rows[stages[0]]["selection"])
  out = {"stages": list(stages), "chosen": {}, "chosen_lr": {}}
  accs = {}
  for arm in arms:
    def slice_acc(stage):
      row = rows[stage]
      return row["selection"][arm][f"{row['chosen_lr'][arm]:g}"]["accuracy"]
    stage = max(stages, key=lambda st: (slice_acc(st), -stages.index(st)))
    lr = rows[stage]["chosen_lr"][arm]
    accs[arm] = [r["accuracy"] for r in rows[stage]["runs"] if r["arm"] == arm]
    out["chosen"][arm] = {"stage": stage, "lr": lr, "slice_accuracy": slice_acc(stage)}
    out["chosen_lr"][arm] = lr
    out[arm] = {"accuracies": accs[arm], "mean": statistics.mean(accs[arm])}
  out["verdict"] = {"comparison": f"{arms[0]} - {arms[1]}", **verdict(accs[arms[0]],
                                                                       accs[arms[1]])}
  return out
