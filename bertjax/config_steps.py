"""The named edits of a loaded (locked) config, in the order a fine-tuning run makes them.

A config file and its overrides say what the user asked for; a few fields can only be known
once the run has started (the --init checkpoint's architecture, the machine's fast dtype, the
number of training examples). Each such edit is one function here, so every change made to a
config after `load_config` locked it can be found in one place:

  resolve_model_dtype(cfg)                 model.dtype auto -> this machine's fast dtype
  adopt_checkpoint_model(cfg, model_cfg)   model.* architecture from the --init checkpoint
  resolve_tunable(cfg)                     dropout left at FROM_INIT (no --init) -> 0.1
  use_checkpoint_tokenizer(cfg, path)      data.tokenizer = the checkpoint's own tokenizer
  use_finetune_lengths(cfg)                data.* sequence lengths follow finetune.*
  set_finetune_schedule(cfg, n_train)      train.num_steps / eval_every, optim.warmup_steps
                                           from finetune.num_epochs / warmup_proportion

Pretraining makes two more, beside the code that knows the value: train.num_steps from a
budget (bertjax.train.pretrain.resolve_budget) and model.vocab_size from the tokenizer
(bertjax.train.pretrain.set_vocab_from_tokenizer).
A locked ConfigDict accepts new values for existing fields; nothing here adds a field.
"""
from __future__ import annotations

import math

import ml_collections

# Model fields an --init checkpoint decides (the architecture); compute options (dtype, remat,
# attention_impl, fused_qkv) stay as the config sets them.
ARCH_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
               "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
               "initializer_range", "layer_norm_eps", "hidden_dropout_prob",
               "attention_probs_dropout_prob")
# Of those, fine-tuning hyper-parameters: the checkpoint's value unless the config sets one
# (e.g. --config.model.hidden_dropout_prob=0.2), as transformers' from_pretrained(..., kwargs).
TUNABLE_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Fine-tuning's default for a tunable field: "the --init checkpoint's value" (BERT's 0.1 without
# one). A sentinel rather than 0.1 itself, so that a value the user sets always wins, even 0.1
# on a checkpoint pretrained without dropout.
FROM_INIT = -1.0


def resolve_model_dtype(cfg: ml_collections.ConfigDict) -> None:
  from bertjax.config import resolve_dtype
  cfg.model.dtype = resolve_dtype(cfg.model.dtype)


def adopt_checkpoint_model(cfg: ml_collections.ConfigDict, model_cfg) -> None:
  """cfg.model takes the checkpoint's architecture; a tunable field the config sets stays."""
  for k in ARCH_FIELDS:
    if k in TUNABLE_FIELDS:
      if cfg.model[k] == FROM_INIT and k in model_cfg:
        cfg.model[k] = model_cfg[k]
    elif k in model_cfg:
      cfg.model[k] = model_cfg[k]
  resolve_tunable(cfg)


def resolve_tunable(cfg: ml_collections.ConfigDict) -> None:
  """A tunable field still at FROM_INIT (no checkpoint, or one without it) -> BERT's default."""
  from bertjax.config import model_config
  defaults = model_config()
  for k in TUNABLE_FIELDS:
    if cfg.model[k] == FROM_INIT:
      cfg.model[k] = defaults[k]


def use_checkpoint_tokenizer(cfg: ml_collections.ConfigDict, path: str) -> None:
  """The checkpoint records and copies the tokenizer in use."""
  cfg.data.tokenizer = path


def use_finetune_lengths(cfg: ml_collections.ConfigDict) -> None:
  """data.max_seq_length = finetune.max_seq_length, so config.validate checks it too."""
  f = cfg.finetune
  cfg.data.max_seq_length = f.max_seq_length
  cfg.data.max_predictions_per_seq = min(cfg.data.max_predictions_per_seq, f.max_seq_length)


def set_finetune_schedule(cfg: ml_collections.ConfigDict, num_train: int) -> None:
  """Steps from epochs: num_steps = ceil(epochs x examples / batch); warmup a proportion of
  them (finetune.warmup_proportion < 0 keeps optim.warmup_steps); evaluation every epoch
  unless finetune.eval_every says otherwise."""
  f, t = cfg.finetune, cfg.train
  batch = t.global_batch_size
  t.num_steps = max(1, math.ceil(f.num_epochs * num_train / batch))
  if f.warmup_proportion >= 0:
    cfg.optim.warmup_steps = int(f.warmup_proportion * t.num_steps)
  t.eval_every = f.eval_every or max(1, math.ceil(num_train / batch))
