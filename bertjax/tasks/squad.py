"""SQuAD v1.1: JSON reader, doc-stride windows, answer char->token mapping, n-best decoding.

Follows the original BERT run_squad: the context is split on whitespace into words (with their
character offsets), each word is sub-tokenised, and a long context becomes windows of
`max_seq_length` tokens that start every `doc_stride` tokens:

    [CLS] question (<= max_query_length) [SEP] context window [SEP] [PAD]...

A token's character span in the context (from `featurize.word_pieces`) maps the gold answer to
start/end token positions (windows that do not contain it point at [CLS]) and maps a predicted
span back to the exact substring of the original context. Decoding scores start+end logits over
the n_best starts x n_best ends of every window, keeping spans inside the context, at most
`max_answer_length` tokens long, and starting where the window has the token's maximum context.

Split by article (`finetune.article_split=N`, when only one file is at hand): the first N
articles of the dev file train, the rest evaluate.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Sequence

import numpy as np

from bertjax import scoring
from bertjax.errors import UserError
from bertjax.tasks import featurize, registry


@dataclasses.dataclass
class SquadExample:
  qid: str
  question: str
  context: str
  answers: list[str]          # gold texts (v1.1 dev has up to 3+, train one)
  answer_starts: list[int]    # character offsets into context
  article: int


def read_squad(path: str) -> list[SquadExample]:
  try:
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
  except OSError as e:
    raise UserError(f"{path}: cannot read ({e.strerror})") from None
  except UnicodeDecodeError as e:
    raise UserError(f"{path}: not UTF-8 (byte {e.start}); convert the file to UTF-8") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
  if not isinstance(data, dict) or not isinstance(data.get("data"), list):
    raise UserError(f"{path}: not a SQuAD file (expected {{\"data\": [articles...]}})")
  out = []
  for a, article in enumerate(data["data"]):
    for p, para in enumerate(article.get("paragraphs", [])):
      context = para.get("context")
      if not isinstance(context, str):
        raise UserError(f"{path}: data[{a}].paragraphs[{p}] has no context string")
      for q, qa in enumerate(para.get("qas", [])):
        try:
          answers = [ans["text"] for ans in qa["answers"]]
          starts = [int(ans["answer_start"]) for ans in qa["answers"]]
          out.append(SquadExample(str(qa["id"]), qa["question"], context, answers, starts, a))
        except (KeyError, TypeError, ValueError) as e:
          raise UserError(f"{path}: data[{a}].paragraphs[{p}].qas[{q}]: malformed question "
                          f"({type(e).__name__}: {e}); need id, question, answers[text, "
                          "answer_start]") from None
        for i, (text, s) in enumerate(zip(answers, starts)):
          if not (0 <= s <= len(context) - len(text) and context[s:s + len(text)] == text):
            raise UserError(
                f"{path}: data[{a}].paragraphs[{p}].qas[{q}].answers[{i}] (id {qa['id']}): "
                f"answer {text[:40]!r} is not in the context at answer_start={s} (the context "
                f"there reads {context[max(s, 0):max(s, 0) + len(text)][:40]!r}); fix "
                "answer_start or the text")
  return out


def _read(data_dir: str, split: str, fcfg) -> list[SquadExample]:
  n = int(getattr(fcfg, "article_split", 0) or 0) if fcfg is not None else 0
  if n and split in ("train", "dev"):
    path = registry.split_file(data_dir, "dev", fcfg, ("dev-v1.1.json",))
    examples = read_squad(path)
    articles = 1 + max((e.article for e in examples), default=-1)
    if not 0 < n < articles:
      raise UserError(f"finetune.article_split={n}: {path} has {articles} articles; use 1.."
                      f"{articles - 1}")
    return [e for e in examples if (e.article < n) == (split == "train")]
  names = {"train": ("train-v1.1.json", "train.json"), "dev": ("dev-v1.1.json", "dev.json"),
           "test": ("test-v1.1.json", "test.json")}.get(split, (f"{split}.json",))
  return read_squad(registry.split_file(data_dir, split, fcfg, names))


def squad_metrics(predictions: dict, examples_or_answers) -> dict:
  if isinstance(examples_or_answers, dict):
    answers = examples_or_answers
  else:
    answers = {e.qid: e.answers for e in examples_or_answers}
  return scoring.squad_v1(answers, predictions)


registry.register(registry.TaskSpec(
    name="squad", family="span", read=_read, labels=None, metrics=squad_metrics,
    primary_metric="f1", description="SQuAD v1.1 extractive QA (EM, F1)"))


# --------------------------------------------------------------- features

def _is_whitespace(c: str) -> bool:
  return c in " \t\r\n" or ord(c) == 0x202F


def split_words(text: str) -> tuple[list[str], list[int]]:
  """Whitespace words and their start offsets (run_squad's doc_tokens)."""
  words, starts, prev_ws = [], [], True
  for i, c in enumerate(text):
    if _is_whitespace(c):
      prev_ws = True
    else:
      if prev_ws:
        words.append(c)
        starts.append(i)
      else:
        words[-1] += c
      prev_ws = False
  return words, starts


def windows(n_tokens: int, max_doc: int, stride: int) -> list[tuple[int, int]]:
  """(start, length) windows over n_tokens, each starting `stride` after the previous."""
  spans, start = [], 0
  while True:
    length = min(n_tokens - start, max_doc)
    spans.append((start, length))
    if start + length >= n_tokens:
      return spans
    start += min(length, stride)


def _max_context(spans, idx: int, pos: int) -> bool:
  """Is window idx the one where token pos has the most context on both sides (run_squad)?"""
  best, best_i = None, None
  for i, (start, length) in enumerate(spans):
    if not start <= pos < start + length:
      continue
    score = min(pos - start, start + length - 1 - pos) + 0.01 * length
    if best is None or score > best:
      best, best_i = score, i
  return best_i == idx


def make_features(examples: Sequence[SquadExample], tok, max_seq_length: int, doc_stride: int,
              max_query_length: int, training: bool) -> dict[str, np.ndarray]:
  """Features [F, S] for the windows of every example.

  Keys: input_ids, segment_ids, input_mask; start_positions, end_positions [F] (training);
  example_index [F]; char_start, char_end [F, S] (context span of each token, -1 off-context);
  max_context [F, S] bool.
  """
  cache: dict[str, tuple] = {}
  feats = {k: [] for k in ("input_ids", "segment_ids", "input_mask", "start_positions",
                           "end_positions", "example_index", "char_start", "char_end",
                           "max_context")}
  queries = featurize.encode_texts(tok, [e.question for e in examples])
  for ei, (ex, q) in enumerate(zip(examples, queries)):
    if ex.context not in cache:
      words, starts = split_words(ex.context)
      ids, _, cs, ce = featurize.word_pieces(tok, words, starts)
      cache[ex.context] = (ids, np.asarray(cs, np.int32), np.asarray(ce, np.int32))
    ids, cs, ce = cache[ex.context]
    q = q[:max_query_length]
    max_doc = max_seq_length - len(q) - 3
    if max_doc < 1:
      raise UserError(f"finetune.max_query_length={max_query_length} leaves no room for the "
                      f"context in max_seq_length={max_seq_length}; lower it")
    tok_start = tok_end = -1
    if training and ex.answers:
      a0 = ex.answer_starts[0]
      a1 = a0 + len(ex.answers[0])
      inside = np.flatnonzero((ce > a0) & (cs < a1))
      if len(inside):
        tok_start, tok_end = int(inside[0]), int(inside[-1])
    spans = windows(len(ids), max_doc, doc_stride)
    off = len(q) + 2  # [CLS] q [SEP]
    for si, (start, length) in enumerate(spans):
      input_ids, segment_ids, input_mask = featurize.pack(tok, q, ids[start:start + length],
                                                          max_seq_length)
      c_start = np.full(max_seq_length, -1, np.int32)
      c_end = np.full(max_seq_length, -1, np.int32)
      c_start[off:off + length] = cs[start:start + length]
      c_end[off:off + length] = ce[start:start + length]
      maxc = np.zeros(max_seq_length, bool)
      for j in range(length):
        maxc[off + j] = _max_context(spans, si, start + j)
      sp = ep = 0  # answer outside this window -> [CLS]
      if tok_start >= start and tok_end < start + length:
        sp, ep = tok_start - start + off, tok_end - start + off
      for k, v in (("input_ids", input_ids), ("segment_ids", segment_ids),
                   ("input_mask", input_mask), ("start_positions", sp), ("end_positions", ep),
                   ("example_index", ei), ("char_start", c_start), ("char_end", c_end),
                   ("max_context", maxc)):
        feats[k].append(v)
  return {k: np.asarray(v, np.int32 if k != "max_context" else bool) for k, v in feats.items()}


def decode(examples: Sequence[SquadExample], feats: dict[str, np.ndarray],
           start_logits: np.ndarray, end_logits: np.ndarray, n_best: int = 20,
           max_answer_length: int = 30) -> dict[str, str]:
  """Best span per question over its windows -> {qid: answer text from the original context}."""
  best: dict[int, tuple[float, int, int]] = {}
  for f in range(len(start_logits)):
    ei = int(feats["example_index"][f])
    cs, ce, maxc = feats["char_start"][f], feats["char_end"][f], feats["max_context"][f]
    sl, el = start_logits[f], end_logits[f]
    starts = np.argsort(-sl, kind="stable")[:n_best]
    ends = np.argsort(-el, kind="stable")[:n_best]
    for s in starts:
      if cs[s] < 0 or not maxc[s]:
        continue
      for e in ends:
        if cs[e] < 0 or e < s or e - s + 1 > max_answer_length:
          continue
        score = float(sl[s] + el[e])
        if ei not in best or score > best[ei][0]:
          best[ei] = (score, int(cs[s]), int(ce[e]))
  out = {}
  for ei, ex in enumerate(examples):
    out[ex.qid] = ex.context[best[ei][1]:best[ei][2]] if ei in best else ""
  return out


def write_predictions(path: str, predictions: dict[str, str]) -> None:
  """The official format: {question id: answer text}."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(predictions, f, ensure_ascii=False, indent=1)
