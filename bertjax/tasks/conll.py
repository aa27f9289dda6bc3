"""CoNLL-2003-style column files: one token per line, blank line between sentences.

    -DOCSTART- -X- -X- O          <- document separator: skipped
                                  <- blank line: end of sentence
    EU NNP B-NP B-ORG             <- word, POS, chunk, NER (space- or tab-separated)

The label column is selectable (finetune.label_column): `ner` (the last column), `pos` (the
second), `chunk` (the third) or a 0-based column index (negative counts from the end). The
tags are used as written: IOB1 as CoNLL-2003 is released, or IOB2/BIO; the metric (conlleval
rules) reads both. Predictions are written back as `word gold predicted` lines, conlleval's
input format.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from bertjax import scoring
from bertjax.errors import UserError
from bertjax.tasks import registry

NAMED_COLUMNS = {"pos": 1, "chunk": 2, "ner": -1}


@dataclasses.dataclass
class Sentence:
  guid: str
  words: list[str]
  tags: list[str]


def label_index(label_column: str) -> int:
  key = (label_column or "ner").strip().lower()
  if key in NAMED_COLUMNS:
    return NAMED_COLUMNS[key]
  try:
    return int(key)
  except ValueError:
    raise UserError(f"finetune.label_column={label_column!r}: use ner, pos, chunk or a column "
                    "index") from None


def read_conll(path: str, label_column: str = "ner") -> list[Sentence]:
  col = label_index(label_column)
  out: list[Sentence] = []
  words, tags, ncols, start = [], [], None, 0

  def flush():
    nonlocal words, tags
    if words:
      out.append(Sentence(f"{os.path.basename(path)}:{start}", words, tags))
    words, tags = [], []

  try:
    f = open(path, encoding="utf-8-sig")
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  with f:
    for line_no, line in enumerate(_utf8_lines(f, path), 1):
      fields = line.split()
      if not fields:
        flush()
        continue
      if fields[0] == "-DOCSTART-":
        flush()
        continue
      if ncols is None:
        ncols = len(fields)
      if len(fields) != ncols or len(fields) < 2:
        raise UserError(f"{path}:{line_no}: expected {ncols} columns (word ... tag), found "
                        f"{len(fields)}; one token per line, blank line between sentences")
      if not -len(fields) <= col < len(fields) or col == 0:
        raise UserError(f"{path}:{line_no}: label column {col} is not a tag column of "
                        f"{len(fields)}; set --config.finetune.label_column")
      if not words:
        start = line_no
      words.append(fields[0])
      tags.append(fields[col])
  flush()
  return out


def _utf8_lines(f, path: str):
  """The lines of an open text file; bytes that are not UTF-8 are a UserError, not a crash."""
  n = 0
  try:
    for n, line in enumerate(f, 1):
      yield line
  except UnicodeDecodeError:
    raise UserError(f"{path}: not UTF-8 (around line {n + 1}); convert the file to "
                    "UTF-8") from None


_FILES = {"train": ("train.txt", "eng.train", "train.conll"),
          "dev": ("dev.txt", "valid.txt", "eng.testa", "dev.conll"),
          "test": ("test.txt", "eng.testb", "test.conll")}


def _read(default_column: str):
  def read(data_dir: str, split: str, fcfg) -> list[Sentence]:
    path = registry.split_file(data_dir, split, fcfg, _FILES.get(split, (f"{split}.txt",)))
    column = (getattr(fcfg, "label_column", "") if fcfg is not None else "") or default_column
    return read_conll(path, column)
  return read


def ner_metrics(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict:
  r = scoring.conlleval(gold, pred)
  return {"f1": r["f1"], "precision": r["precision"], "recall": r["recall"],
          "accuracy": scoring.token_accuracy(gold, pred)}


def pos_metrics(pred, gold) -> dict:
  return {"accuracy": scoring.token_accuracy(gold, pred)}


registry.register(registry.TaskSpec(
    name="conll2003", family="tagging", read=_read("ner"), labels=None, metrics=ner_metrics,
    primary_metric="f1", description="CoNLL-2003 NER columns; entity F1 (conlleval)"))
registry.register(registry.TaskSpec(
    name="pos", family="tagging", read=_read("pos"), labels=None, metrics=pos_metrics,
    primary_metric="accuracy", description="CoNLL-style POS column; token accuracy"))


def write_predictions(path: str, sentences: Sequence[Sentence], predictions) -> None:
  """conlleval's input: `word gold predicted` per token, blank line between sentences."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for s, pred in zip(sentences, predictions, strict=True):
      for w, g, p in zip(s.words, s.tags, pred, strict=True):
        f.write(f"{w} {g} {p}\n")
      f.write("\n")
