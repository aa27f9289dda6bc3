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
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bertjax import config_steps, sharding as shd
from bertjax.errors import UserError
from bertjax.heads import POOLINGS, FineTuneModel
from bertjax.tasks import batching, families, featurize, registry
from bertjax.tasks.families import INPUTS
from bertjax.train.task import TrainTask
from bertjax.weights import warm_start

# Model inputs of packed rows only (bertjax.tasks.batching).
PACKED_INPUTS = ("position_ids", "cls_positions")
# Training batches whose packed row counts choose the compiled shapes (a few ms of host work per
# hundred batches).
PLAN_STEPS = 5000


# --------------------------------------------------------------- loading the starting point

def load_init(cfg) -> tuple[Optional[dict], str, bool]:
  """--init -> (encoder params or None, tokenizer path, do_lower_case); cfg.model takes the
  checkpoint's architecture. Without --init: random encoder, data.tokenizer."""
  f = cfg.finetune
  if not f.init:
    config_steps.resolve_tunable(cfg)
    return None, cfg.data.tokenizer, cfg.data.do_lower_case
  from bertjax.weights import bundle
  params, model_cfg, tok_path, lower = bundle.load_encoder(f.init)
  config_steps.adopt_checkpoint_model(cfg, model_cfg)
  return warm_start.encoder_of(params), tok_path, lower


# --------------------------------------------------------------- losses (pure, jittable)

def _apply(model, params, batch, key):
  packed = {k: batch[k] for k in PACKED_INPUTS if k in batch}
  return model.apply({"params": params}, batch["input_ids"], batch["segment_ids"],
                     batch["input_mask"], deterministic=key is None,
                     rngs={"dropout": key} if key is not None else {}, **packed)


def example_count(batch) -> dict:
  """Packed batches: the step's example total, so micro-batch losses add up exactly."""
  return {"examples": batch["example_weight"].sum()}


def loss_fn(model, family: families.Family, params, batch, key, den=None):
  """(params, batch, dropout key[, den]) -> (loss, metrics); means over the (micro-)batch.
  Packed batches (example_weight [B, K]): sums over real examples over den["examples"],
  metrics as {x, x_weight} sums (the family's `loss`)."""
  out = _apply(model, params, batch, key)
  w = batch.get("example_weight") if family.packed_loss else None            # [B, K] | None
  n = None
  if w is not None:
    n = den["examples"] if den is not None else jnp.maximum(w.sum(), 1.0)
  return family.loss(out, batch, w, n)


# --------------------------------------------------------------- the job

@dataclasses.dataclass
class EvalSet:
  split: str
  examples: list
  features: dict


@dataclasses.dataclass
class FinetuneJob:
  spec: registry.TaskSpec
  family: families.Family
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
    s = inputs["input_ids"].shape[1]
    out = None
    for arrays, idx, layout in self.batcher.eval_batches(inputs, bs):
      # Every process holds every eval feature: each device takes its rows of the global batch
      # (works on one host and many; the replicated outputs are readable on every process).
      batch = {k: jax.make_array_from_callback(v.shape, sharding, lambda i, v=v: v[i])
               for k, v in arrays.items() if k in INPUTS + PACKED_INPUTS}
      y = self.family.unpack(jax.device_get(fn(params, batch)), layout, s)
      if out is None:   # [F, ...] per output, features back in their own order
        out = jax.tree_util.tree_map(lambda a: np.zeros((n,) + a.shape[1:], a.dtype), y)
      jax.tree_util.tree_map(lambda o, a: o.__setitem__(idx, a), out, y)
    return out

  def predict(self, params, es: EvalSet, raw: Optional[dict] = None):
    """Decoded predictions: label strings / floats per example, tag lists per sentence, or
    {qid: answer} for SQuAD. `raw`: a dict that also receives the head outputs by split."""
    out = self.raw_outputs(params, es.features)
    if raw is not None:
      raw[es.split] = out
    return self.family.decode(out, es, self.labels, self.cfg.finetune)

  def score(self, es: EvalSet, preds) -> dict:
    return self.family.score(self.spec, es, preds, self.labels)

  def evaluate(self, params) -> dict:
    out = {}
    # The trainer's final evaluation and write_predictions see the same params: predict once.
    raw = {}  # kept for finetune.write_logits
    self._last = (params, {es.split: self.predict(params, es, raw) for es in self.evals}, raw)
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
    last = getattr(self, "_last", (None, {}, {}))
    for es, labelled in [(e, True) for e in self.evals] + [(e, False) for e in self.tests]:
      if last[0] is params and es.split in last[1]:
        preds, raw = last[1][es.split], last[2]
      else:
        raw = {}
        preds = self.predict(params, es, raw)
      if labelled:
        results[es.split] = {k: float(v) for k, v in self.score(es, preds).items()}
      path = os.path.join(out_dir, self.family.prediction_file(name, es.split))
      if jax.process_index() == 0:        # every process predicted (collective); one writes
        self.family.write_predictions(path, es, preds)
        if self.cfg.finetune.get("write_logits") and raw.get(es.split) is not None:
          leaves = jax.tree_util.tree_leaves(raw[es.split])
          np.savez(os.path.splitext(path)[0] + ".logits.npz",
                   **{f"output_{i}": np.asarray(a) for i, a in enumerate(leaves)})
      paths[es.split] = path
    if jax.process_index() == 0:
      os.makedirs(workdir, exist_ok=True)
      with open(os.path.join(workdir, "eval_results.json"), "w") as fh:
        json.dump({"task": name, "results": results, "predictions": paths,
                   "model_dtype": self.cfg.model.dtype,
                   "batching": self.cfg.finetune.batching}, fh, indent=2)
    return {"results": results, "predictions": paths}


def build(cfg: ml_collections.ConfigDict, *, mesh=None, tokenizer=None) -> FinetuneJob:
  """Read, tokenise and featurize `cfg.finetune.task`; set the step counts in `cfg`."""
  from bertjax.data.tokenizer import load_tokenizer
  f, t = cfg.finetune, cfg.train
  if not f.task:
    raise UserError("no task: pass --task NAME (or set finetune.task)")
  spec = registry.get(f.task)
  spec = families.get(spec.family).resolve(spec, f)
  family = families.get(spec.family)
  if not f.data or not os.path.isdir(f.data):
    raise UserError(f"--data {f.data!r}: not a folder; point it at the task's files "
                    f"(e.g. ../shared/data/glue/SST-2)")
  frozen = freeze_predicate(f.freeze, f.freeze_layers)
  if f.pooling not in POOLINGS:
    raise UserError(f"--config.finetune.pooling={f.pooling!r}: use one of {', '.join(POOLINGS)}")
  if f.batching not in batching.MODES:
    raise UserError(f"--config.finetune.batching={f.batching!r}: use one of "
                    f"{', '.join(batching.MODES)}")
  buckets = batching.bucket_lengths(f.bucket_lengths, f.max_seq_length)
  config_steps.resolve_model_dtype(cfg)

  encoder_params, tok_path, lower = load_init(cfg)
  config_steps.use_checkpoint_tokenizer(cfg, tok_path)
  tok = tokenizer or load_tokenizer(tok_path, lower)
  if tok.vocab_size > cfg.model.vocab_size:
    raise UserError(f"tokenizer {tok_path} has {tok.vocab_size} tokens but model.vocab_size="
                    f"{cfg.model.vocab_size}; use the checkpoint's own tokenizer")
  if f.max_seq_length > cfg.model.max_position_embeddings:
    raise UserError(f"finetune.max_seq_length={f.max_seq_length} exceeds the model's "
                    f"max_position_embeddings={cfg.model.max_position_embeddings}")
  config_steps.use_finetune_lengths(cfg)

  def cap(xs, n):
    return xs[:n] if n else xs

  train_ex = cap(spec.read(f.data, "train", f), f.max_train_examples)
  if not train_ex:
    raise UserError(f"{f.data}: the {spec.name} training file has no examples")
  labels = family.labels(spec, train_ex)
  label_map = {l: i for i, l in enumerate(labels)} if labels else None
  evals = []
  for split in spec.eval_splits:
    ex = cap(spec.read(f.data, split, f), f.max_eval_examples)
    evals.append(EvalSet(split, ex, family.features(ex, tok, f, label_map, False)))
  tests = []
  for split in spec.test_splits if f.predict_test else ():
    try:
      test_ex = cap(spec.read(f.data, split, f), f.max_eval_examples)
    except UserError as e:
      if f"no {split} file" not in str(e):
        raise
      continue                           # test files are optional
    tests.append(EvalSet(split, test_ex, family.features(test_ex, tok, f, label_map, False)))
  train_feats = family.features(train_ex, tok, f, label_map, True)
  keep = INPUTS + tuple(family.targets)
  train_arrays = {k: train_feats[k] for k in keep}

  mesh = mesh if mesh is not None else shd.make_mesh(cfg.mesh)
  config_steps.set_finetune_schedule(cfg, len(train_arrays["input_ids"]))
  batch = t.global_batch_size

  model = FineTuneModel(cfg.model, family, len(labels) if labels else 1, f.pooling)
  n_dev = shd.mesh_size(mesh)
  order = featurize.BatchIterator(train_arrays, batch, seed=t.seed)   # the global order
  it = batching.TrainBatches(
      train_arrays, order,
      batching.Batcher(f.batching, f.max_seq_length, buckets, n_dev * t.grad_accum_steps),
      process_index=jax.process_index(), process_count=jax.process_count())
  # Compiles are a large share of a short job: the run's few row counts come from its batches
  # (the first PLAN_STEPS; a later batch that needs more rows rounds up as before).
  it.plan_rows(min(t.num_steps, PLAN_STEPS), f.shape_cost_rows)

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

  job = FinetuneJob(spec=spec, family=family, cfg=cfg, tokenizer=tok, model=model,
                    labels=labels,
                    train_features=train_feats, evals=evals, tests=tests, mesh=mesh,
                    num_train_examples=len(train_ex),
                    batcher=batching.Batcher(f.batching, f.max_seq_length, buckets, n_dev))
  packed_loss = f.batching == "pack" and family.packed_loss
  job.task = TrainTask(
      name=f"finetune-{spec.name}", model=model, init_params=init_params,
      loss_fn=functools.partial(loss_fn, model, family), train_iter=it,
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
  # Dropout: the --init checkpoint's (transformers does the same), 0.1 without one; any value
  # set here or by --config.model.*_dropout_prob wins.
  cfg.model.hidden_dropout_prob = config_steps.FROM_INIT
  cfg.model.attention_probs_dropout_prob = config_steps.FROM_INIT
  return cfg
