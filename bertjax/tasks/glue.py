"""GLUE readers (the original TSVs) and generic TSV / CSV / JSONL text-classification files.

GLUE's files are read as released: tab-separated, quoting OFF (`csv.QUOTE_NONE`: MRPC and QQP
sentences contain unbalanced double quotes), UTF-8 with an optional BOM (MRPC starts with one).
Columns are found by header name where the file has a header; CoLA's train/dev files have none
(4 columns: source, label, original label, sentence). Test files have no label column: their
examples carry label None and an `index` guid, which the prediction TSV writes back.
A row too short for the columns it needs, or a label outside the task's set, is a UserError
naming the file and line.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import sys
import warnings
from typing import Any, Iterator, Optional, Sequence

from bertjax import scoring
from bertjax.errors import UserError
from bertjax.tasks import registry

csv.field_size_limit(sys.maxsize)  # QNLI/MNLI have long fields


@dataclasses.dataclass
class Example:
  guid: str                  # the file's index/id column, else "<split>-<line>"
  text_a: str
  text_b: Optional[str]      # None for single-sentence tasks
  label: Any                 # label string, float (regression) or None (unlabelled test rows)


def read_rows(path: str, delimiter: str = "\t") -> Iterator[tuple[int, list[str]]]:
  """(line number, fields) of a delimited file; TSVs with quoting off, CSVs with quoting on."""
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  try:
    with open(path, encoding="utf-8-sig", newline="") as f:
      reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
      line = 1
      for row in reader:
        if any("\x00" in x for x in row):  # csv reads NUL bytes since Python 3.11
          raise UserError(f"{path}:{line}: NUL byte: binary data, not a text "
                          f"{'CSV' if delimiter == ',' else 'TSV'}; check the file")
        yield line, row
        line = reader.line_num + 1
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 ({e}); convert the file to UTF-8") from None
  except csv.Error as e:
    raise UserError(f"{path}: malformed {'CSV' if delimiter == ',' else 'TSV'} ({e})") from None


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a GLUE task keeps its fields. Names are header columns; ints are positions."""
  text_a: Any
  text_b: Any = None
  label: Any = None
  header: bool = True        # train/dev have a header row (CoLA's do not)
  guid: Any = None           # id column of the labelled files (None = line number)
  # Skip (and count, with a warning) rows too short for the columns: QQP's released train
  # file has a few questions broken across lines, which transformers' reader also skips.
  skip_short_rows: bool = False


def _column(header: Optional[list[str]], key: Any, path: str) -> Optional[int]:
  if key is None or isinstance(key, int):
    return key
  if header is None:
    raise UserError(f"{path}: expected a header row with column {key!r}")
  if key not in header:
    return None
  return header.index(key)


def read_layout(path: str, split: str, layout: Layout, labels: Optional[Sequence[str]],
                regression: bool = False, delimiter: str = "\t") -> list[Example]:
  """Read one GLUE-style file. Test files (which have a header and no label) are detected by
  the absent label column; CoLA's test file has a header although its train/dev do not."""
  rows = read_rows(path, delimiter)
  first = next(rows, None)
  if first is None:
    return []
  header = None
  has_header = layout.header or split == "test"
  if has_header:
    header = [h.strip() for h in first[1]]
  else:
    rows = _chain(first, rows)
  if header is not None and not layout.header:
    # CoLA test: `index  sentence`, no label; positions do not apply.
    text_a, text_b, label, guid = _column(header, "sentence", path), None, None, 0
  else:
    text_a = _column(header, layout.text_a, path)
    text_b = _column(header, layout.text_b, path)
    label = _column(header, layout.label, path)
    guid = _column(header, "index", path) if header and "index" in header else \
        _column(header, layout.guid, path)
    if text_a is None or (layout.text_b is not None and text_b is None):
      want = [layout.text_a] + ([layout.text_b] if layout.text_b is not None else [])
      raise UserError(f"{path}:1: header {header} lacks the text column(s) {want}; is this the "
                      "right task's file?")
    if label is None and split != "test":
      raise UserError(f"{path}:1: header {header} lacks the label column {layout.label!r}")
  need = max(i for i in (text_a, text_b, label, guid) if i is not None) + 1
  label_set = set(labels) if labels is not None else None
  out, skipped = [], []
  for line, row in rows:
    if not row or (len(row) == 1 and not row[0].strip()):
      continue  # blank line (e.g. a trailing one)
    if len(row) < need and layout.skip_short_rows:
      skipped.append(line)
      continue
    if len(row) < need:
      raise UserError(f"{path}:{line}: expected at least {need} tab-separated fields, found "
                      f"{len(row)}; a malformed row (quoting must stay off for GLUE TSVs)")
    y = None
    if label is not None:
      y = row[label].strip()
      if regression:
        try:
          y = float(y)
        except ValueError:
          raise UserError(f"{path}:{line}: label {y!r} is not a number") from None
      elif label_set is not None and y not in label_set:
        raise UserError(f"{path}:{line}: label {y!r} is not one of {sorted(label_set)}")
    out.append(Example(
        guid=row[guid].strip() if guid is not None else f"{split}-{line}",
        text_a=row[text_a],
        text_b=row[text_b] if text_b is not None else None,
        label=y))
  if skipped:
    warnings.warn(f"{path}: skipped {len(skipped)} rows with fewer than {need} fields "
                  f"(first at line {skipped[0]})")
  return out


def _chain(first, rest):
  yield first
  yield from rest


# --------------------------------------------------------------- GLUE tasks

def _cls_metrics(preds, refs) -> dict:
  return {"accuracy": 100.0 * scoring.accuracy(preds, refs)}


def _cls_f1_metrics(preds, refs) -> dict:
  return {"accuracy": 100.0 * scoring.accuracy(preds, refs),
          "f1": 100.0 * scoring.f1_binary(preds, refs)}


def _mcc_metrics(preds, refs) -> dict:
  return {"mcc": 100.0 * scoring.matthews_corrcoef(preds, refs),
          "accuracy": 100.0 * scoring.accuracy(preds, refs)}


def _reg_metrics(preds, refs) -> dict:
  return {"pearson": 100.0 * scoring.pearson(preds, refs),
          "spearman": 100.0 * scoring.spearman(preds, refs)}


_FILES = {"train": ("train.tsv",), "dev": ("dev.tsv",), "test": ("test.tsv",),
          "dev_matched": ("dev_matched.tsv",), "dev_mismatched": ("dev_mismatched.tsv",),
          "test_matched": ("test_matched.tsv",), "test_mismatched": ("test_mismatched.tsv",)}


def _glue_reader(layout: Layout, labels, regression=False):
  def read(data_dir: str, split: str, fcfg=None) -> list[Example]:
    path = registry.split_file(data_dir, split, fcfg, _FILES.get(split, (f"{split}.tsv",)))
    # Test splits are read without the label check (their rows have no label).
    return read_layout(path, "test" if split.startswith("test") else split, layout,
                       labels, regression)
  return read


def _glue(name, layout, labels, metric_fn, primary, regression=False, **kw):
  registry.register(registry.TaskSpec(
      name=name, family="regression" if regression else "classification",
      read=_glue_reader(layout, labels, regression), labels=labels, metrics=metric_fn,
      primary_metric=primary, **kw))


_glue("SST-2", Layout("sentence", label="label"), ("0", "1"), _cls_metrics, "accuracy",
      description="GLUE SST-2 sentiment (accuracy)")
_glue("CoLA", Layout(3, label=1, header=False), ("0", "1"), _mcc_metrics, "mcc",
      description="GLUE CoLA acceptability (Matthews correlation)")
_glue("MRPC", Layout("#1 String", "#2 String", "Quality"), ("0", "1"), _cls_f1_metrics, "f1",
      description="GLUE MRPC paraphrase (accuracy and F1)")
_glue("RTE", Layout("sentence1", "sentence2", "label"), ("entailment", "not_entailment"),
      _cls_metrics, "accuracy", description="GLUE RTE entailment")
_glue("QNLI", Layout("question", "sentence", "label"), ("entailment", "not_entailment"),
      _cls_metrics, "accuracy", description="GLUE QNLI question entailment")
_glue("MNLI", Layout("sentence1", "sentence2", "gold_label"),
      ("contradiction", "entailment", "neutral"), _cls_metrics, "accuracy",
      eval_splits=("dev_matched", "dev_mismatched"), test_splits=("test_matched", "test_mismatched"),
      description="GLUE MNLI (matched and mismatched dev)")
_glue("QQP", Layout("question1", "question2", "is_duplicate", guid="id", skip_short_rows=True),
      ("0", "1"),
      _cls_f1_metrics, "f1", description="GLUE QQP duplicate questions (accuracy and F1)")
_glue("STS-B", Layout("sentence1", "sentence2", "score"), None, _reg_metrics, "pearson",
      regression=True, description="GLUE STS-B similarity (Pearson, Spearman)")


# --------------------------------------------------------------- generic files

def read_generic(path: str, split: str, fcfg, regression: bool = False) -> list[Example]:
  """A TSV (quoting off) / CSV (quoting on) with a header, or JSONL objects, holding the
  columns finetune.text_column [, finetune.text_b_column] and finetune.label_column."""
  text_col = fcfg.text_column
  text_b_col = fcfg.text_b_column or None
  label_col = fcfg.label_column or "label"
  if path.endswith(".jsonl") or path.endswith(".json"):
    out = []
    with open(path, encoding="utf-8-sig") as f:
      for line, text in enumerate(f, 1):
        if not text.strip():
          continue
        try:
          obj = json.loads(text)
        except json.JSONDecodeError as e:
          raise UserError(f"{path}:{line}: not a JSON object ({e.msg})") from None
        missing = [k for k in (text_col, text_b_col) if k and k not in obj]
        if not isinstance(obj, dict) or missing:
          raise UserError(f"{path}:{line}: missing field(s) {missing or [text_col]}; set "
                          "--config.finetune.text_column / text_b_column")
        y = obj.get(label_col)
        if y is None and split != "test":
          raise UserError(f"{path}:{line}: no label field {label_col!r}; set "
                          "--config.finetune.label_column")
        if y is not None:
          y = float(y) if regression else str(y)
        out.append(Example(str(obj.get("id", obj.get("idx", f"{split}-{line}"))),
                           str(obj[text_col]), str(obj[text_b_col]) if text_b_col else None, y))
    return out
  delimiter = "," if path.endswith(".csv") else "\t"
  layout = Layout(text_col, text_b_col, label_col, guid="id")
  return read_layout(path, split, layout, None, regression, delimiter)


def _generic(ext: str):
  def read(data_dir: str, split: str, fcfg) -> list[Example]:
    path = registry.split_file(data_dir, split, fcfg, (f"{split}.{ext}",))
    return read_generic(path, split, fcfg, getattr(fcfg, "regression", False))
  return read


def _generic_metrics(preds, refs) -> dict:
  out = {"accuracy": 100.0 * scoring.accuracy(preds, refs)}
  if len(set(refs) | set(preds)) <= 2:
    out["f1"] = 100.0 * scoring.f1_binary(preds, refs)
  out["mcc"] = 100.0 * scoring.matthews_corrcoef(preds, refs)
  return out


for _ext in ("tsv", "csv", "jsonl"):
  registry.register(registry.TaskSpec(
      name=_ext, family="classification", read=_generic(_ext), labels=None,
      metrics=_generic_metrics, primary_metric="accuracy",
      description=f"any {_ext.upper()} with text [text_b] and label columns (finetune.*_column)"))


def write_predictions(path: str, examples: Sequence[Example], predictions: Sequence) -> None:
  """GLUE's submission format: `index<TAB>prediction` with a header."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write("index\tprediction\n")
    for ex, p in zip(examples, predictions, strict=True):
      f.write(f"{ex.guid}\t{p:.3f}\n" if isinstance(p, float) else f"{ex.guid}\t{p}\n")
