"""Fine-tuning families: one object each, carrying everything the families do differently.

A task (bertjax.tasks.registry) names its family; the family brings

  labels(spec, train_examples)         label strings in id order (None: no label set)
  features(examples, tok, fcfg, ...)   padded numpy features [F, S] (+ host-side metadata)
  targets                              the batch keys its loss reads, with their shapes
  head(config, num_labels, pooling)    the Flax head on the encoder (bertjax.heads)
  loss(out, batch, weight, count)      (loss, metrics) of one (micro-)batch, jittable
  unpack(outputs, layout, max_len)     a batch's outputs back per feature (bertjax.tasks.batching)
  decode(out, eval_set, labels, fcfg)  outputs -> predictions (labels, scores, tags, answers)
  score(spec, eval_set, preds, labels) the task's metric on those predictions
  resolve(spec, fcfg)                  the task as the family runs it
  prediction_file / write_predictions  the family's prediction format

so bertjax.tasks.finetune, bertjax.heads and the trainer never ask which family they hold.
A new family is one subclass registered in FAMILIES (and its name in registry.FAMILIES).

Families:
  classification  [CLS]-pooled -> C logits, cross-entropy        (SST-2, CoLA, MRPC, MNLI, ...)
  regression      [CLS]-pooled -> 1 score, mean squared error    (STS-B)
  tagging         each word's first sub-token -> C logits        (CoNLL NER / POS)
  span            every token -> start and end logits            (SQuAD)
Losses: means over the (micro-)batch; packed batches (example_weight [B, K]) sum over real
examples and divide by `count` (the step's example total), with metrics as {x, x_weight} sums.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax.numpy as jnp
import numpy as np
import optax

from bertjax import heads
from bertjax.tasks import batching, conll, featurize, glue, registry, squad

# Keys of a batch the model reads; the rest of a feature set is targets or host-side metadata.
INPUTS = ("input_ids", "segment_ids", "input_mask")


class Family:
  name = ""
  # batch key -> ("example" [B] | "token" [B, S], numpy dtype): what the loss reads.
  targets: dict = {}
  # Output width when fixed by the family (regression: 1 score; span: start/end); else labels.
  fixed_num_labels: Optional[int] = None
  # Whether the loss reads packed rows' example_weight (tagging weighs tokens instead).
  packed_loss = True

  def resolve(self, spec, fcfg):
    """The task as this family runs it (a family may hand it to another)."""
    return spec

  def labels(self, spec, train_examples) -> Optional[list]:
    return list(spec.labels) if spec.labels is not None else None

  def features(self, examples, tok, fcfg, label_map, training: bool) -> dict:
    raise NotImplementedError

  def head(self, config, num_labels: int, pooling: str):
    raise NotImplementedError

  def loss(self, out, batch, w, n):
    raise NotImplementedError

  def unpack(self, outputs, layout, max_len: int):
    return batching.unpack_examples(outputs, layout)

  def decode(self, out, es, labels, fcfg):
    raise NotImplementedError

  def score(self, spec, es, preds, labels) -> dict:
    return spec.metrics(preds, [e.label for e in es.examples])

  def prediction_file(self, name: str, split: str) -> str:
    return f"{name}_{split}.tsv"

  def write_predictions(self, path: str, es, preds) -> None:
    glue.write_predictions(path, es.examples, preds)


# --------------------------------------------------------------- sentences and pairs

def sentence_features(examples, tok, max_len: int, label_map, regression: bool) -> dict:
  """[CLS] a [SEP] (b [SEP]) per example -> INPUTS [F, S] and label [F] (an id, or a float
  score for regression)."""
  a = featurize.encode_texts(tok, [e.text_a for e in examples])
  pair = any(e.text_b is not None for e in examples)
  b = featurize.encode_texts(tok, [e.text_b or "" for e in examples]) if pair else [None] * len(a)
  rows = [featurize.pack(tok, x, y, max_len) for x, y in zip(a, b)]
  out = {k: np.stack([r[i] for r in rows]) if rows else np.zeros((0, max_len), np.int32)
         for i, k in enumerate(INPUTS)}
  if regression:
    out["label"] = np.asarray([e.label if e.label is not None else 0.0 for e in examples],
                              np.float32)
  else:
    out["label"] = np.asarray([label_map.get(e.label, 0) for e in examples], np.int32)
  return out


class Classification(Family):
  name = "classification"
  targets = {"label": ("example", np.int32)}

  def resolve(self, spec, fcfg):
    """A generic labelled task (csv/tsv/jsonl: no fixed labels) with finetune.regression set
    runs as regression, scored with STS-B's metrics."""
    if spec.labels is None and fcfg.regression:
      return dataclasses.replace(spec, family=Regression.name,
                                 metrics=registry.get("stsb").metrics, primary_metric="pearson")
    return spec

  def labels(self, spec, train_examples):
    if spec.labels is not None:
      return list(spec.labels)
    return sorted({e.label for e in train_examples}, key=str)

  def features(self, examples, tok, fcfg, label_map, training):
    return sentence_features(examples, tok, fcfg.max_seq_length, label_map, regression=False)

  def head(self, config, num_labels, pooling):
    return heads.ClassificationHead(num_labels, config, pooling, name="classifier")

  def loss(self, logits, batch, w, n):                                         # [B, (K,) C]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # [B, (K)]
    hit = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    if w is None:
      return ce.mean(), {"accuracy": hit.mean()}
    return (ce * w).sum() / n, {"accuracy": (hit * w).sum(), "accuracy_weight": w.sum()}

  def decode(self, out, es, labels, fcfg):
    return [labels[i] for i in np.argmax(out, -1)] if out is not None else []

  def score(self, spec, es, preds, labels):
    # Score label ids; labels outside the training set count as wrong (-1).
    index = {l: i for i, l in enumerate(labels)}
    return spec.metrics([index[p] for p in preds],
                        [index.get(e.label, -1) for e in es.examples])


class Regression(Family):
  name = "regression"
  targets = {"label": ("example", np.float32)}
  fixed_num_labels = 1

  def labels(self, spec, train_examples):
    return None

  def features(self, examples, tok, fcfg, label_map, training):
    return sentence_features(examples, tok, fcfg.max_seq_length, label_map, regression=True)

  def head(self, config, num_labels, pooling):
    return heads.ClassificationHead(1, config, pooling, name="classifier")

  def loss(self, out, batch, w, n):
    err = out - batch["label"]                                                 # [B, (K)]
    if w is None:
      loss = jnp.mean(err * err)
      return loss, {"mse": loss}
    return (err * err * w).sum() / n, {"mse": (err * err * w).sum(), "mse_weight": w.sum()}

  def decode(self, out, es, labels, fcfg):
    return [float(x) for x in out] if out is not None else []


# --------------------------------------------------------------- tokens

def tagging_features(sentences, tok, max_len: int, label_map) -> dict:
  """One feature per chunk of a sentence (chunks end at word boundaries, <= max_len - 2
  pieces); the label sits on each word's first piece (label_weights 1), other pieces weigh 0.
  Host-side: sentence_index [F], word_index [F, S] (word at a first piece, else -1)."""
  keys = INPUTS + ("label_ids", "label_weights", "word_index")
  feats = {k: [] for k in keys + ("sentence_index",)}
  room = max_len - 2
  for si, s in enumerate(sentences):
    ids, widx, _, _ = featurize.word_pieces(tok, s.words)
    firsts = [i for i in range(len(ids)) if i == 0 or widx[i] != widx[i - 1]]
    starts = firsts + [len(ids)]
    w = 0
    while w < len(s.words):
      # Take words while their pieces fit (at least one word, its pieces cut to fit).
      end = w + 1
      while end < len(s.words) and starts[end + 1] - starts[w] <= room:
        end += 1
      lo, hi = starts[w], min(starts[end], starts[w] + room)
      pieces = ids[lo:hi]
      input_ids, segment_ids, input_mask = featurize.pack(tok, pieces, None, max_len)
      label_ids = np.zeros(max_len, np.int32)
      weights = np.zeros(max_len, np.float32)
      word_index = np.full(max_len, -1, np.int32)
      for wi in range(w, end):
        pos = 1 + starts[wi] - lo
        label_ids[pos] = label_map.get(s.tags[wi], 0)
        weights[pos] = 1.0
        word_index[pos] = wi
      for k, v in zip(keys, (input_ids, segment_ids, input_mask, label_ids, weights, word_index)):
        feats[k].append(v)
      feats["sentence_index"].append(si)
      w = end
  return {k: np.asarray(v) for k, v in feats.items()}


class Tagging(Family):
  name = "tagging"
  targets = {"label_ids": ("token", np.int32), "label_weights": ("token", np.float32)}
  packed_loss = False

  def labels(self, spec, train_examples):
    if spec.labels is not None:
      return list(spec.labels)
    tags = sorted({t for s in train_examples for t in s.tags})
    # "O" first: a word the model never scores (none, by construction) would default to it.
    return (["O"] + [t for t in tags if t != "O"]) if "O" in tags else tags

  def features(self, examples, tok, fcfg, label_map, training):
    return tagging_features(examples, tok, fcfg.max_seq_length, label_map)

  def head(self, config, num_labels, pooling):
    return heads.TokenClassificationHead(num_labels, config, name="classifier")

  def loss(self, out, batch, w, n):
    w = batch["label_weights"]                                                 # [B, S]
    ce = optax.softmax_cross_entropy_with_integer_labels(out, batch["label_ids"])  # [B, S]
    n = jnp.maximum(w.sum(), 1.0)
    acc = ((jnp.argmax(out, -1) == batch["label_ids"]) * w).sum()
    return (ce * w).sum() / n, {"token_acc": acc, "token_acc_weight": w.sum()}

  def unpack(self, outputs, layout, max_len):
    return batching.unpack_tokens(outputs, layout, max_len, 0.0)

  def decode(self, out, es, labels, fcfg):
    preds = [[labels[0]] * len(s.words) for s in es.examples]
    if out is not None:
      best = np.argmax(out, -1)                                                 # [F, S]
      for f, si in enumerate(es.features["sentence_index"]):
        for pos in np.flatnonzero(es.features["word_index"][f] >= 0):
          preds[si][es.features["word_index"][f][pos]] = labels[best[f, pos]]
    return preds

  def score(self, spec, es, preds, labels):
    return spec.metrics(preds, [s.tags for s in es.examples])

  def prediction_file(self, name, split):
    return f"{name}_{split}.conll"

  def write_predictions(self, path, es, preds):
    conll.write_predictions(path, es.examples, preds)


# --------------------------------------------------------------- spans (extractive QA)

class Span(Family):
  name = "span"
  targets = {"start_positions": ("example", np.int32), "end_positions": ("example", np.int32)}
  fixed_num_labels = 1

  def labels(self, spec, train_examples):
    return None

  def features(self, examples, tok, fcfg, label_map, training):
    return squad.make_features(examples, tok, fcfg.max_seq_length, fcfg.doc_stride,
                               fcfg.max_query_length, training)

  def head(self, config, num_labels, pooling):
    return heads.SpanHead(config, name="qa_outputs")

  def loss(self, out, batch, w, n):
    start, end = out                                                           # [B, S] each
    if w is not None:
      # Each packed example's softmax runs over its own tokens only.
      ids = jnp.arange(1, w.shape[1] + 1)                                      # [K]
      own = batch["input_mask"][:, None, :] == ids[None, :, None]              # [B, K, S]
      low = jnp.finfo(jnp.float32).min
      start = jnp.where(own, start[:, None, :], low)                           # [B, K, S]
      end = jnp.where(own, end[:, None, :], low)
    ls = optax.softmax_cross_entropy_with_integer_labels(start, batch["start_positions"])
    le = optax.softmax_cross_entropy_with_integer_labels(end, batch["end_positions"])
    hit = (jnp.argmax(start, -1) == batch["start_positions"]).astype(jnp.float32)
    if w is None:
      return ((ls + le) / 2).mean(), {"start_acc": hit.mean()}
    return ((ls + le) / 2 * w).sum() / n, {"start_acc": (hit * w).sum(),
                                           "start_acc_weight": w.sum()}

  def unpack(self, outputs, layout, max_len):
    low = np.finfo(np.float32).min
    return (batching.unpack_tokens(outputs[0], layout, max_len, low),
            batching.unpack_tokens(outputs[1], layout, max_len, low))

  def decode(self, out, es, labels, fcfg):
    if out is None:
      return {e.qid: "" for e in es.examples}
    return squad.decode(es.examples, es.features, out[0], out[1], fcfg.n_best,
                        fcfg.max_answer_length)

  def score(self, spec, es, preds, labels):
    return spec.metrics(preds, es.examples)

  def prediction_file(self, name, split):
    return f"{name}_{split}_predictions.json"

  def write_predictions(self, path, es, preds):
    squad.write_predictions(path, preds)


FAMILIES: dict[str, Family] = {f.name: f for f in (Classification(), Regression(), Tagging(),
                                                   Span())}
assert set(FAMILIES) == set(registry.FAMILIES), "a family without its name in registry.FAMILIES"


def get(name: str) -> Family:
  return FAMILIES[name]
