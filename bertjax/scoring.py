"""Evaluation metrics of the fine-tuning tasks, on host-side numpy/Python values.

Each follows the reference scorer of its benchmark: GLUE's (accuracy, F1 of the positive class,
Matthews correlation, Pearson/Spearman), conlleval.pl for entity-level chunk F1, and the official
SQuAD v1.1 evaluate script. No JAX here: the PyTorch peer in benchmarks/ imports this module too.
"""
from __future__ import annotations

import collections
import re
import string
from typing import Iterable, Sequence

import numpy as np


# ---------------------------------------------------------------- classification / regression

def accuracy(preds: Sequence, labels: Sequence) -> float:
  preds, labels = np.asarray(preds), np.asarray(labels)
  return float((preds == labels).mean()) if len(labels) else 0.0


def f1_binary(preds: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
  """F1 of the positive class (GLUE's MRPC/QQP F1); 0 when nothing is predicted or gold positive."""
  preds, labels = np.asarray(preds), np.asarray(labels)
  tp = float(np.sum((preds == positive) & (labels == positive)))
  fp = float(np.sum((preds == positive) & (labels != positive)))
  fn = float(np.sum((preds != positive) & (labels == positive)))
  return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def matthews_corrcoef(preds: Sequence[int], labels: Sequence[int]) -> float:
  """Matthews correlation, multi-class form (Gorodkin 2004); equals the binary phi coefficient.

  0 when a marginal is constant (the denominator vanishes), as scikit-learn does.
  """
  preds, labels = np.asarray(preds), np.asarray(labels)
  classes = np.union1d(preds, labels)
  p = np.searchsorted(classes, preds)
  t = np.searchsorted(classes, labels)
  conf = np.zeros((len(classes), len(classes)), np.float64)  # [true, pred]
  np.add.at(conf, (t, p), 1.0)
  s, c = conf.sum(), np.trace(conf)
  t_k, p_k = conf.sum(1), conf.sum(0)
  denom = np.sqrt((s * s - p_k @ p_k) * (s * s - t_k @ t_k))
  return float((c * s - t_k @ p_k) / denom) if denom else 0.0


def pearson(preds: Sequence[float], labels: Sequence[float]) -> float:
  x, y = np.asarray(preds, np.float64), np.asarray(labels, np.float64)
  x, y = x - x.mean(), y - y.mean()
  denom = np.sqrt((x * x).sum() * (y * y).sum())
  return float((x * y).sum() / denom) if denom else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
  """1-based ranks, ties given their average rank (scipy.stats.rankdata 'average')."""
  order = np.argsort(x, kind="stable")
  sorted_x = x[order]
  # Start index of each run of equal values, and the average rank over the run.
  starts = np.r_[0, np.flatnonzero(sorted_x[1:] != sorted_x[:-1]) + 1]
  ends = np.r_[starts[1:], len(x)]
  avg = (starts + ends + 1) / 2.0
  ranks = np.empty(len(x), np.float64)
  ranks[order] = np.repeat(avg, ends - starts)
  return ranks


def spearman(preds: Sequence[float], labels: Sequence[float]) -> float:
  """Spearman's rho: Pearson correlation of the (tie-averaged) ranks."""
  return pearson(_ranks(np.asarray(preds, np.float64)), _ranks(np.asarray(labels, np.float64)))


# ---------------------------------------------------------------- conlleval chunk F1

def _split_tag(tag: str) -> tuple[str, str]:
  """'B-PER' -> ('B', 'PER'); 'O' -> ('O', ''); a tag without '-' is its own prefix, no type."""
  if tag == "O":
    return "O", ""
  prefix, sep, kind = tag.partition("-")
  return (prefix, kind) if sep else (tag, "")


def _end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  # conlleval.pl endOfChunk, rule for rule, for B/I/O/E ...
  end = ((prev_tag in ("B", "I") and tag in ("B", "O")) or
         (prev_tag == "E" and tag in ("E", "I", "O")) or
         (prev_tag not in ("O", ".") and prev_type != type_))
  # ... and for IOBES (as later ports of conlleval do): E and S always close their chunk, S
  # after B/I closes the open one.
  return end or prev_tag in ("E", "S") or (prev_tag in ("B", "I") and tag == "S")


def _start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
  # conlleval.pl startOfChunk, rule for rule: in IOB1 an I- after O opens a chunk and B- (after
  # B/I/O) opens one; a change of type always does.
  start = ((prev_tag in ("B", "I", "O") and tag == "B") or
           (prev_tag == "O" and tag in ("I", "E")) or
           (prev_tag == "E" and tag in ("E", "I")) or
           (tag not in ("O", ".") and prev_type != type_))
  # IOBES extension (see _end_of_chunk): S opens a chunk, anything but O/. after E or S does.
  return start or tag == "S" or (prev_tag in ("E", "S") and tag not in ("O", "."))


def conlleval(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> dict:
  """Entity-level micro precision/recall/F1 exactly as conlleval.pl counts them.

  `gold` and `pred` are lists of sentences, each a list of tags. Works for IOB1 (as CoNLL-2003 is
  released: I- opens a chunk, B- only separates two adjacent chunks of one type), IOB2/BIO and
  IOBES: conlleval's rules accept all of them. A chunk counts as correct when both sides start
  it at the same token with the same type and end it at the same token.
  Returns {"precision", "recall", "f1", "accuracy" (per token), "per_type": {type: {...}}} in
  percent, as conlleval prints them.
  """
  correct_chunk = collections.Counter()
  found_gold = collections.Counter()
  found_pred = collections.Counter()
  correct_tags = tokens = 0
  for sent_gold, sent_pred in zip(gold, pred, strict=True):
    if len(sent_gold) != len(sent_pred):
      raise ValueError(f"sentence lengths differ: {len(sent_gold)} gold vs {len(sent_pred)} "
                       "predicted tags")
    last_g, last_gt, last_p, last_pt = "O", "", "O", ""
    in_correct = False
    # The trailing ("O", "O") is conlleval's sentence boundary: it closes open chunks.
    for i, (g_raw, p_raw) in enumerate(list(zip(sent_gold, sent_pred)) + [("O", "O")]):
      g, gt = _split_tag(g_raw)
      p, pt = _split_tag(p_raw)
      end_g = _end_of_chunk(last_g, g, last_gt, gt)
      end_p = _end_of_chunk(last_p, p, last_pt, pt)
      start_g = _start_of_chunk(last_g, g, last_gt, gt)
      start_p = _start_of_chunk(last_p, p, last_pt, pt)
      if in_correct:
        if end_g and end_p and last_gt == last_pt:
          in_correct = False
          correct_chunk[last_gt] += 1
        elif end_g != end_p or gt != pt:
          in_correct = False
      if start_g and start_p and gt == pt:
        in_correct = True
      if start_g:
        found_gold[gt] += 1
      if start_p:
        found_pred[pt] += 1
      if i < len(sent_gold):
        correct_tags += int(g == p and gt == pt)
        tokens += 1
      last_g, last_gt, last_p, last_pt = g, gt, p, pt

  def prf(c, fp, fg):
    prec = 100.0 * c / fp if fp else 0.0
    rec = 100.0 * c / fg if fg else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return {"precision": prec, "recall": rec, "f1": f1}

  out = prf(sum(correct_chunk.values()), sum(found_pred.values()), sum(found_gold.values()))
  out["accuracy"] = 100.0 * correct_tags / tokens if tokens else 0.0
  out["found_gold"] = sum(found_gold.values())
  out["found_pred"] = sum(found_pred.values())
  out["correct"] = sum(correct_chunk.values())
  types = sorted(set(found_gold) | set(found_pred))
  out["per_type"] = {t: prf(correct_chunk[t], found_pred[t], found_gold[t]) for t in types}
  return out


def token_accuracy(gold: Iterable[Sequence[str]], pred: Iterable[Sequence[str]]) -> float:
  """Per-token accuracy in percent (POS tagging)."""
  n = c = 0
  for g, p in zip(gold, pred, strict=True):
    n += len(g)
    c += sum(a == b for a, b in zip(g, p))
  return 100.0 * c / n if n else 0.0


# ---------------------------------------------------------------- SQuAD v1.1

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
  """The official v1.1 normalisation: lowercase, drop punctuation, articles, extra whitespace."""
  s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
  return " ".join(_ARTICLES.sub(" ", s).split())


def squad_exact(prediction: str, truth: str) -> float:
  return float(normalize_answer(prediction) == normalize_answer(truth))


def squad_f1(prediction: str, truth: str) -> float:
  pred_toks = normalize_answer(prediction).split()
  gold_toks = normalize_answer(truth).split()
  same = sum((collections.Counter(pred_toks) & collections.Counter(gold_toks)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_toks), same / len(gold_toks)
  return 2 * precision * recall / (precision + recall)


def squad_v1(answers: dict[str, list[str]], predictions: dict[str, str]) -> dict:
  """EM and F1 in percent, each the max over a question's gold answers, averaged over questions.

  `answers`: question id -> gold answer texts; a question without a prediction scores 0, as in
  the official script.
  """
  em = f1 = 0.0
  for qid, golds in answers.items():
    if qid not in predictions:
      continue
    pred = predictions[qid]
    em += max(squad_exact(pred, g) for g in golds)
    f1 += max(squad_f1(pred, g) for g in golds)
  n = max(len(answers), 1)
  return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1 / n}
