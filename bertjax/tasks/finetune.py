"""A registered task + a config -> a `TrainTask` for the one trainer, and its predictions.

    job = build(cfg)                       # read files, tokenise, featurize, pick the head
    summary = loop.train(job.task, cfg, workdir, mesh=job.mesh)
    job.write_predictions(summary["state"].params, workdir)

`build` reads the task's train and dev files (and test, when present), tokenises them with the
`--init` checkpoint's own tokenizer, and sets train.num_steps / optim.warmup_steps /
train.eval_every from finetune.num_epochs / warmup_proportion / eval_every. Evaluation runs on
the host (`eval_fn`): the forward pass is jitted and sharded like training, then the task's
metric (F1, MCC, conlleval, SQuAD EM/F1) reads the decoded predictions.

Batches, in training and evaluation, are laid out per finetune.batching (bertjax.tasks.batching):
packed rows (the default), length buckets, or rows padded to max_seq_length. Each distinct batch
shape compiles once (a few per run); the predictions are the same in all three (tests).
model.dtype=auto (the fine-tuning default) becomes bfloat16 where the hardware runs it fast and
float32 elsewhere (bertjax.config.fast_bf16).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from bertjax import sharding as shd
from bertjax.config import resolve_dtype
from bertjax.errors import UserError
from bertjax.heads import POOLINGS, FineTuneModel
from bertjax.tasks import batching, conll, featurize, glue, registry, squad
from bertjax.train.task import TrainTask
from bertjax.weights import warm_start

# Model fields an --init checkpoint decides (the architecture); compute options (dtype, remat,
# attention_impl, fused_qkv) stay as the config sets them.
ARCH_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
               "initializer_range", "layer_norm_eps", "hidden_dropout_prob",
               "attention_probs_dropout_prob")
# Of those, fine-tuning hyper-parameters: the checkpoint's value unless the config sets another
# (e.g. --config.model.hidden_dropout_prob=0.2), as transformers' from_pretrained(..., kwargs).
TUNABLE_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")

# Keys of a batch the model and loss read; the rest of a feature set is host-side metadata.
INPUTS = ("input_ids", "segment_ids", "input_mask")
# Model inputs of packed rows only (bertjax.tasks.batching).
PACKED_INPUTS = ("position_ids", "cls_positions")
TARGETS = {"classification": ("label",), "regression": ("label",),
           "tagging": ("label_ids", "label_weights"), "span": ("start_positions", "end_positions")}


# --------------------------------------------------------------- loading the starting point

def load_init(cfg) -> tuple[Optional[dict], str, bool]:
  """--init -> (encoder params or None, tokenizer path, do_lower_case); cfg.model takes the
  checkpoint's architecture. Without --init: random encoder, data.tokenizer."""
  f = cfg.finetune
  if not f.init:
    return None, cfg.data.tokenizer, cfg.data.do_lower_case
  from bertjax.weights import bundle
  params, model_cfg, tok_path, lower = bundle.load_encoder(f.init)
  from bertjax.config import model_config
  defaults = model_config()
  with cfg.model.unlocked():
    for k in ARCH_FIELDS:
      if k in TUNABLE_FIELDS and cfg.model[k] != defaults[k]:
        continue  # set by the user: an override, not the checkpoint's
      if k in model_cfg:
        cfg.model[k] = model_cfg[k]
  return warm_start.encoder_of(params), tok_path, lower


# --------------------------------------------------------------- features per family

def _sentence_features(examples, tok, max_len, family, label_map):
  a = featurize.encode_texts(tok, [e.text_a for e in examples])
  pair = any(e.text_b is not None for e in examples)
  b = featurize.encode_texts(tok, [e.text_b or "" for e in examples]) if pair else [None] * len(a)
  rows = [featurize.pack(tok, x, y, max_len) for x, y in zip(a, b)]
  out = {k: np.stack([r[i] for r in rows]) if rows else np.zeros((0, max_len), np.int32)
         for i, k in enumerate(INPUTS)}
  if family == "regression":
    out["label"] = np.asarray([e.label if e.label is not None else 0.0 for e in examples],
                              np.float32)
  else:
    out["label"] = np.asarray([label_map.get(e.label, 0) for e in examples], np.int32)
  return out


def _tagging_features(sentences, tok, max_len, label_map):
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


# --------------------------------------------------------------- losses (pure, jittable)

def _apply(model, params, batch, key):
  packed = {k: batch[k] for k in PACKED_INPUTS if k in batch}
  return model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                     batch["input_mask"], deterministic=key is None,
                     rngs={"dropout": key} if key is not None else {}, **packed)


def example_count(batch) -> dict:
  """Packed batches: the step's example total, so micro-batch losses add up exactly."""
  return {"examples": batch["example_weight"].sum()}


def loss_fn(model, family: str, params, batch, key, den=None):
  """(params, batch, dropout key[, den]) -> (loss, metrics); means over the (micro-)batch.
  Packed batches (example_weight [B, K]): sums over real examples over den["examples"],
  metrics as {x, x_weight} sums."""
  out = _apply(model, params, batch, key)
  w = batch.get("example_weight")                                              # [B, K] | None
  if w is not None and family != "tagging":
    n = den["examples"] if den is not None else jnp.maximum(w.sum(), 1.0)
  if family == "classification":
    logits = out                                                               # [B, (K,) C]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])  # [B, (K)]
    hit = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    if w is None:
      return ce.mean(), {"accuracy": hit.mean()}
    return (ce * w).sum() / n, {"accuracy": (hit * w).sum(), "accuracy_weight": w.sum()}
  if family == "regression":
    err = out - batch["label"]                                                 # [B, (K)]
    if w is None:
      loss = jnp.mean(err * err)
      return loss, {"mse": loss}
    return (err * err * w).sum() / n, {"mse": (err * err * w).sum(), "mse_weight": w.sum()}
  if family == "tagging":
    w = batch["label_weights"]                                                 # [B, S]
    ce = optax.softmax_cross_entropy_with_integer_labels(out, batch["label_ids"])  # [B, S]
    n = jnp.maximum(w.sum(), 1.0)
    acc = ((jnp.argmax(out, -1) == batch["label_ids"]) * w).sum()
    return (ce * w).sum() / n, {"token_acc": acc, "token_acc_weight": w.sum()}
  if family == "span":
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
  raise ValueError(family)


# --------------------------------------------------------------- the job

@dataclasses.dataclass
class EvalSet:
  split: str
  examples: list
  features: dict


@dataclasses.dataclass
class FinetuneJob:
  spec: registry.TaskSpec
  cfg: Any
  tokenizer: Any
  model: FineTuneModel
  labels: Optional[list]
  train_features: dict
  evals: list                      # EvalSet per task.eval_splits
  tests: list                      # EvalSet per task.test_splits found (no labels)
  mesh: Any
  task: TrainTask = None
  num_train_examples: int = 0
  batcher: Optional[batching.Batcher] = None  # evaluation layout (finetune.batching)

  # -- inference
  def _predict_fn(self):
    if not hasattr(self, "_jit_predict"):
      self._jit_predict = jax.jit(
          lambda p, b: _apply(self.model, p, b, None),
          in_shardings=(None, shd.batch_sharding(self.mesh)),
          out_shardings=shd.replicated(self.mesh))
    return self._jit_predict

  def raw_outputs(self, params, feats: dict):
    """Model outputs over every feature, in order (numpy): logits / scores / (start, end)."""
    n_dev = shd.mesh_size(self.mesh)
    bs = max(n_dev, -(-self.cfg.finetune.eval_batch_size // n_dev) * n_dev)  # rows per batch
    fn = self._predict_fn()
    inputs = {k: feats[k] for k in INPUTS}
    n = len(inputs["input_ids"])
    sharding = shd.batch_sharding(self.mesh)
    fam, s = self.spec.family, inputs["input_ids"].shape[1]
    out = None
    for arrays, idx, layout in self.batcher.eval_batches(inputs, bs):
      # Every process holds every eval feature: each device takes its rows of the global batch
      # (works on one host and many; the replicated outputs are readable on every process).
      batch = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
               for k, v in arrays.items() if k in INPUTS + PACKED_INPUTS}
      y = batching.unpack(jax.device_get(fn(params, batch)), layout, fam, s)
      if out is None:   # [F, ...] per output, features back in their own order
        out = jax.tree_util.tree_map(lambda a: np.zeros((n,) + a.shape[1:], a.dtype), y)
      jax.tree_util.tree_map(lambda o, a: o.__setitem__(idx, a), out, y)
    return out

  def predict(self, params, es: EvalSet):
    """Decoded predictions: label strings / floats per example, tag lists per sentence, or
    {qid: answer} for SQuAD."""
    fam = self.spec.family
    out = self.raw_outputs(params, es.features)
    if fam == "classification":
      return [self.labels[i] for i in np.argmax(out, -1)] if out is not None else []
    if fam == "regression":
      return [float(x) for x in out] if out is not None else []
    if fam == "tagging":
      preds = [[self.labels[0]] * len(s.words) for s in es.examples]
      if out is not None:
        best = np.argmax(out, -1)                                             # [F, S]
        for f, si in enumerate(es.features["sentence_index"]):
          for pos in np.flatnonzero(es.features["word_index"][f] >= 0):
            preds[si][es.features["word_index"][f][pos]] = self.labels[best[f, pos]]
      return preds
    f = self.cfg.finetune
    if out is None:
      return {e.qid: "" for e in es.examples}
    return squad.decode(es.examples, es.features, out[0], out[1], f.n_best, f.max_answer_length)

  def score(self, es: EvalSet, preds) -> dict:
    fam = self.spec.family
    if fam == "span":
      return self.spec.metrics(preds, es.examples)
    if fam == "tagging":
      return self.spec.metrics(preds, [s.tags for s in es.examples])
    refs = [e.label for e in es.examples]
    if fam == "classification":
      # Score label ids; labels outside the training set count as wrong (-1).
      index = {l: i for i, l in enumerate(self.labels)}
      return self.spec.metrics([index[p] for p in preds], [index.get(r, -1) for r in refs])
    return self.spec.metrics(preds, refs)

  def evaluate(self, params) -> dict:
    out = {}
    # The trainer's final evaluation and write_predictions see the same params: predict once.
    self._last = (params, {es.split: self.predict(params, es) for es in self.evals})
    for es in self.evals:
      m = self.score(es, self._last[1][es.split])
      prefix = "" if len(self.evals) == 1 else es.split + "_"
      out.update({prefix + k: float(v) for k, v in m.items()})
    return out

  def write_predictions(self, params, workdir: str) -> dict:
    """Predictions for every dev split (and test) under WORKDIR/predictions; -> {split: path}.
    Also writes WORKDIR/eval_results.json with the dev metrics."""
    out_dir = os.path.join(workdir, "predictions")
    paths, results = {}, {}
    name = self.spec.name
    last = getattr(self, "_last", (None, {}))
    for es, labelled in [(e, True) for e in self.evals] + [(e, False) for e in self.tests]:
      if last[0] is params and es.split in last[1]:
        preds = last[1][es.split]
      else:
        preds = self.predict(params, es)
      if labelled:
        results[es.split] = {k: float(v) for k, v in self.score(es, preds).items()}
      fam = self.spec.family
      if fam == "span":
        path = os.path.join(out_dir, f"{name}_{es.split}_predictions.json")
        save = functools.partial(squad.write_predictions, path, preds)
      elif fam == "tagging":
        path = os.path.join(out_dir, f"{name}_{es.split}.conll")
        save = functools.partial(conll.write_predictions, path, es.examples, preds)
      else:
        path = os.path.join(out_dir, f"{name}_{es.split}.tsv")
        save = functools.partial(glue.write_predictions, path, es.examples, preds)
      if jax.process_index() == 0:        # every process predicted (collective); one writes
        save()
      paths[es.split] = path
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "eval_results.json"), "w") as fh:
        json.dump({"task": name, "results": results, "predictions": paths,
                   "model_dtype": self.cfg.model.dtype,
                   "batching": self.cfg.finetune.batching}, fh, indent=2)
    return {"results": results, "predictions": paths}


def _features(spec, examples, tok, f, label_map, training: bool):
  fam = spec.family
  if fam in ("classification", "regression"):
    return _sentence_features(examples, tok, f.max_seq_length, fam, label_map)
  if fam == "tagging":
    return _tagging_features(examples, tok, f.max_seq_length, label_map)
  return squad.make_features(examples, tok, f.max_seq_length, f.doc_stride, f.max_query_length,
                             training)


def _labels(spec, train_examples) -> Optional[list]:
  if spec.family in ("regression", "span"):
    return None
  if spec.labels is not None:
    return list(spec.labels)
  if spec.family == "tagging":
    tags = sorted({t for s in train_examples for t in s.tags})
    # "O" first: a word the model never scores (none, by construction) would default to it.
    return (["O"] + [t for t in tags if t != "O"]) if "O" in tags else tags
  return sorted({e.label for e in train_examples}, key=str)


def build(cfg: ml_collections.ConfigDict, *, mesh=None, tokenizer=None) -> FinetuneJob:
  """Read, tokenise and featurize `cfg.finetune.task`; set the step counts in `cfg`."""
  from bertjax.data.tokenizer import load_tokenizer
  f, t = cfg.finetune, cfg.train
  if not f.task:
    raise UserError("no task: pass --task NAME (or set finetune.task)")
  spec = registry.get(f.task)
  if not f.data or not os.path.isdir(f.data):
    raise UserError(f"--data {f.data!r}: not a folder; point it at the task's files "
                    f"(e.g. ../shared/data/glue/SST-2)")
  regression = spec.family == "regression" or (spec.family == "classification"
                                               and spec.labels is None and f.regression)
  if regression and spec.family == "classification":
    spec = dataclasses.replace(spec, family="regression",
                               metrics=registry.get("stsb").metrics, primary_metric="pearson")
  frozen = freeze_predicate(f.freeze, f.freeze_layers)
  if f.pooling not in POOLINGS:
    raise UserError(f"--config.finetune.pooling={f.pooling!r}: use one of {', '.join(POOLINGS)}")
  if f.batching not in batching.MODES:
    raise UserError(f"--config.finetune.batching={f.batching!r}: use one of "
                    f"{', '.join(batching.MODES)}")
  buckets = batching.bucket_lengths(f.bucket_lengths, f.max_seq_length)
  with cfg.unlocked():
    cfg.model.dtype = resolve_dtype(cfg.model.dtype)   # auto -> this machine's fast dtype

  encoder_params, tok_path, lower = load_init(cfg)
  with cfg.unlocked():
    cfg.data.tokenizer = tok_path  # the checkpoint records and copies the tokenizer in use
  tok = tokenizer or load_tokenizer(tok_path, lower)
  if tok.vocab_size > cfg.model.vocab_size:
    raise UserError(f"tokenizer {tok_path} has {tok.vocab_size} tokens but model.vocab_size="
                    f"{cfg.model.vocab_size}; use the checkpoint's own tokenizer")
  if f.max_seq_length > cfg.model.max_position_embeddings:
    raise UserError(f"finetune.max_seq_length={f.max_seq_length} exceeds the model's "
                    f"max_position_embeddings={cfg.model.max_position_embeddings}")
  with cfg.unlocked():
    cfg.data.max_seq_length = f.max_seq_length  # so config.validate checks it too
    cfg.data.max_predictions_per_seq = min(cfg.data.max_predictions_per_seq, f.max_seq_length)

  def cap(xs, n):
    return xs[:n] if n else xs

  train_ex = cap(spec.read(f.data, "train", f), f.max_train_examples)
  if not train_ex:
    raise UserError(f"{f.data}: the {spec.name} training file has no examples")
  labels = _labels(spec, train_ex)
  label_map = {l: i for i, l in enumerate(labels)} if labels else None
  evals = []
  for split in spec.eval_splits:
    ex = cap(spec.read(f.data, split, f), f.max_eval_examples)
    evals.append(EvalSet(split, ex, _features(spec, ex, tok, f, label_map, False)))
  tests = []
  for split in spec.test_splits if f.predict_test else ():
    try:
      test_ex = cap(spec.read(f.data, split, f), f.max_eval_examples)
    except UserError as e:
      if f"no {split} file" not in str(e):
        raise
      continue                           # test files are optional
    tests.append(EvalSet(split, test_ex, _features(spec, test_ex, tok, f, label_map, False)))
  train_feats = _features(spec, train_ex, tok, f, label_map, True)
  keep = INPUTS + TARGETS[spec.family]
  train_arrays = {k: train_feats[k] for k in keep}

  mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
  n_train = len(train_arrays["input_ids"])
  batch = t.global_batch_size
  num_steps = max(1, math.ceil(f.num_epochs * n_train / batch))
  steps_per_epoch = max(1, math.ceil(n_train / batch))
  with cfg.unlocked():
    t.num_steps = num_steps
    if f.warmup_proportion >= 0:
      cfg.optim.warmup_steps = int(f.warmup_proportion * num_steps)
    t.eval_every = f.eval_every or steps_per_epoch

  model = FineTuneModel(cfg.model, spec.family, len(labels) if labels else 1, f.pooling)
  n_dev = shd.mesh_size(mesh)
  order = featurize.BatchIterator(train_arrays, batch, seed=t.seed)   # the global order
  it = batching.TrainBatches(
      train_arrays, order,
      batching.Batcher(f.batching, f.max_seq_length, buckets, n_dev * t.grad_accum_steps),
      process_index=jax.process_index(), process_count=jax.process_count())

  def init_params(rng, example):
    packed = {k: example[k] for k in PACKED_INPUTS if k in example}
    params = model.init({"params": rng, "dropout": rng}, example["input_ids"],
                        example["segment_ids"], example["input_mask"], **packed)["params"]
    if f.head_zeroinit:  # every subtree but the encoder is the task head
      params = {k: v if k == "bert" else jax.tree_util.tree_map(jnp.zeros_like, v)
                for k, v in params.items()}
    return params

  load = None
  if encoder_params is not None:
    from bertjax.weights import bundle
    # A fine-tuned --init (bertjax export, or a transformers BertFor... via import-hf) whose
    # head is this task's, same labels in the same order: start from that head too.
    init_head = bundle.load_head(f.init, spec.family, labels, pooling=f.pooling)

    loaded = {"bert": encoder_params, **(init_head or {})}

    def load(fresh):
      return warm_start.merge(fresh, loaded, f.init, exact_encoder=True)

  job = FinetuneJob(spec=spec, cfg=cfg, tokenizer=tok, model=model, labels=labels,
                    train_features=train_feats, evals=evals, tests=tests, mesh=mesh,
                    num_train_examples=len(train_ex),
                    batcher=batching.Batcher(f.batching, f.max_seq_length, buckets, n_dev))
  packed_loss = f.batching == "pack" and spec.family != "tagging"
  job.task = TrainTask(
      name=f"finetune-{spec.name}", model=model, init_params=init_params,
      loss_fn=functools.partial(loss_fn, model, spec.family), train_iter=it,
      loss_denominators=example_count if packed_loss else None,
      eval_fn=job.evaluate, load_pretrained=load, frozen=frozen,
      tokenizer_identity=tok.identity() if hasattr(tok, "identity") else None)
  return job


def freeze_predicate(freeze: str, layers: int = 0):
  """finetune.freeze -> the TrainTask's `frozen(path)` (None = train everything).

  encoder:    everything under "bert" (embeddings, layers, pooler): only the head trains, a
              linear probe on the pretrained features;
  embeddings: the embeddings and the first `layers` transformer layers.
  Frozen leaves get no optimizer state and no update (bertjax.optim: optax.set_to_zero).
  """
  if freeze == "none":
    if layers:
      raise UserError("finetune.freeze_layers needs finetune.freeze=embeddings")
    return None
  if freeze == "encoder":
    return lambda path: path[0] == "bert"
  if freeze == "embeddings":
    names = {"embeddings"} | {f"layer_{i}" for i in range(layers)}
    return lambda path: path[0] == "bert" and len(path) > 1 and path[1] in names
  raise UserError(f"finetune.freeze={freeze!r}: use none, encoder or embeddings")


def run(cfg, workdir: str, *, progress: bool = True, command: Optional[list] = None) -> dict:
  """build -> the one trainer -> final dev metrics and prediction files. Returns the summary.
  command: the command line, for the model card of a later `bertjax export`."""
  from bertjax.train import loop
  job = build(cfg)
  summary = loop.train(job.task, cfg, workdir, mesh=job.mesh, progress=progress)
  if jax.process_index() == 0:  # the head, labels and tokenizer `bertjax export` needs
    from bertjax.weights import export
    export.write_task_record(workdir, job, command)
  params = summary.pop("state").params
  if cfg.finetune.write_predictions:
    summary.update(job.write_predictions(params, workdir))
  summary["num_train_examples"] = job.num_train_examples
  return summary


def default_config() -> ml_collections.ConfigDict:
  """base_config() with BERT's fine-tuning recipe (Devlin et al. 2019, appendix A.3): AdamW
  2e-5, batch 32, 3 epochs, 10% linear warmup then linear decay, weight decay 0.01, dropout 0.1.
  Checkpoints are kept few (fine-tuning runs are short and the models are whole BERTs)."""
  from bertjax.config import base_config
  cfg = base_config()
  cfg.optim.learning_rate = 2e-5
  cfg.optim.weight_decay = 0.01
  cfg.optim.warmup_steps = 0
  cfg.train.global_batch_size = 32
  cfg.train.log_every = 10
  cfg.checkpoint.every_steps = 1000
  cfg.checkpoint.keep = 1
  cfg.checkpoint.async_save = False
  cfg.finetune.num_epochs = 3.0
  cfg.model.dtype = "auto"      # bf16 where the hardware runs it fast (config.fast_bf16)
  return cfg
