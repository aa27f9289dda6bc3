"""Typed, nested experiment configs (ml_collections) with strict command-line overrides.

A config file is Python with `get_config()` returning a ConfigDict built on `base_config()`.
Overrides look like `--config.optim.lr=1e-4`; a misspelled key or a value of the wrong type
is a `UserError` naming the key, never a silent default. `RESUME_KEYS` names the fields a
resumed run must keep (the trainer hands their values to the Checkpointer).

Over 400 lines because `base_config()` declares every field once, each with its comment.
"""
from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import inspect
import os
from typing import Sequence

import ml_collections

from bertjax.errors import UserError

# name -> (num_layers, hidden_size, num_heads); intermediate = 4 * hidden (BERT's sizes,
# Turc et al. 2019 for the small ones).
MODEL_SIZES = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


def model_config(size: str = "mini", vocab_size: int = 30522,
                 max_position_embeddings: int = 512) -> ml_collections.ConfigDict:
  """The BERT architecture hyper-parameters (names follow Hugging Face's BertConfig)."""
  if size not in MODEL_SIZES:
    raise UserError(f"unknown model size {size!r}; choose one of {sorted(MODEL_SIZES)}")
  layers, hidden, heads = MODEL_SIZES[size]
  c = ml_collections.ConfigDict()
  c.vocab_size = vocab_size                  # rows of the word-embedding table
  c.hidden_size = hidden                     # H
  c.num_hidden_layers = layers               # L
  c.num_attention_heads = heads              # N; H must divide by N
  c.intermediate_size = 4 * hidden           # FFN inner width
  c.hidden_act = "gelu"                      # exact (erf) GELU, as the original BERT
  c.hidden_dropout_prob = 0.1
  c.attention_probs_dropout_prob = 0.1
  c.max_position_embeddings = max_position_embeddings  # longest sequence the model accepts
  c.type_vocab_size = 2                      # segment A / B
  c.initializer_range = 0.02                 # truncated-normal stddev
  c.layer_norm_eps = 1e-12
  # compute dtype (params stay f32): float32 | bfloat16 | auto (bfloat16 where the hardware runs
  # it fast: TPU, GPU from Ampere, CPU with AMX; float32 elsewhere; see config.fast_bf16)
  c.dtype = "float32"
  c.fused_qkv = False                        # one [H, 3H] matmul instead of three (same function)
  c.remat = False                            # recompute layer activations in the backward pass
  # auto: jax.nn.dot_product_attention (cuDNN on GPU, XLA elsewhere) whenever attention dropout
  # is inactive, the explicit einsum path (with dropout) otherwise | einsum: always the explicit
  # path | cudnn: force cuDNN's fused kernel where the fused call is used (GPU only)
  c.attention_impl = "auto"
  return c


def base_config() -> ml_collections.ConfigDict:
  """Every field an experiment may set, with the default and a comment on each."""
  c = ml_collections.ConfigDict()
  c.model = model_config("mini")

  c.data = d = ml_collections.ConfigDict()
  d.corpus = "data/corpus/*.txt"        # comma-separated globs of text or record files | tfds:NAME
  # (a glob may end in :bert / :prose / :auto to read its files in that format, not corpus_format)
  d.corpus_format = "auto"              # auto | bert (sentence per line) | prose | tfds
  # Record files (.jsonl/.json[.gz|.zst], .parquet, .arrow, a datasets save_to_disk folder): one
  # document per record, its text read with corpus_format like a .txt file's text.
  d.text_field = "text"                 # record field / column holding the document text
  d.id_field = ""                       # optional field / column of a document id ("" = none)
  d.tfds_data_dir = ""                  # TFDS data_dir for tfds: corpora
  d.tfds_text_field = "text"            # feature holding the document text
  d.tokenizer = "data/tokenizer/spm.model"  # SentencePiece .model or WordPiece vocab.txt
  d.do_lower_case = True                # WordPiece only: uncased vocab
  d.prepared_dir = ""                   # where `bertjax prepare` writes shards ("" = WORKDIR/prepared)
  d.heldout_fraction = 0.02             # documents held out for evaluation
  d.max_seq_length = 128                # S
  # nsp: BERT's segment pairs + next-sentence prediction | mlm: MLM only, rows packed to full
  # length from consecutive text of one or more documents (RoBERTa), no NSP head
  d.objective = "nsp"
  d.cross_document_attention = False    # mlm: may a packed row's documents attend to each other
                                        #   (False: block-diagonal, positions restart per document)
  d.max_predictions_per_seq = 20        # P: masked positions per sequence (BERT: 20 at S=128);
                                        #   0 = ceil(highest masking rate x S)
  d.masked_lm_prob = 0.15               # share of maskable tokens to predict (any rate, e.g. 0.3)
  d.masked_lm_prob_end = 0.0            # > 0: the rate moves linearly from masked_lm_prob to this
                                        #   over train.num_steps (mmBERT: 0.3 -> 0.05); 0 = constant
  d.mask_token_prob = 0.8               # a chosen token becomes [MASK] (BERT: 0.8) ...
  d.random_token_prob = 0.1             # ... or a random token (BERT: 0.1); else it stays unchanged
  d.eval_masked_lm_prob = 0.15          # held-out text is scored at this rate (compare recipes)
  d.short_seq_prob = 0.1                # nsp: chunks with a random shorter target length
  d.whole_word_masking = False
  d.num_workers = 0                     # grain worker processes (0 = in-process)
  d.seed = 0

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"                      # adamw | lamb
  o.learning_rate = 1e-4                # peak learning rate
  # linear | cosine (decay after warmup) | wsd (warmup-stable-decay: flat at the peak, then the
  # last decay_fraction of the steps decays linearly) | one_cycle (optax's cosine one-cycle:
  # up from peak/25 to the peak over the warmup, then down to ~0, as in cramming)
  o.schedule = "linear"
  o.warmup_steps = 100
  o.warmup_fraction = 0.0               # > 0: warmup = this share of num_steps (budget runs)
  o.decay_fraction = 0.2                # wsd: share of the steps spent decaying at the end
  o.end_learning_rate = 0.0
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-6
  o.weight_decay = 0.01                 # not applied to LayerNorm scales or biases
  o.clip_norm = 1.0                     # global-norm clipping (0 = off)
  o.layer_lr_decay = 1.0                # < 1: layer i's lr x d^(L-i), embeddings d^(L+1), head 1

  c.train = t = ml_collections.ConfigDict()
  t.global_batch_size = 32              # sequences per optimizer step, over all devices and hosts
  t.grad_accum_steps = 1                # micro-batches per step; batch/accum must divide by devices
  t.num_steps = 1000
  # Budgets set num_steps instead (at most one; the resolved value is kept in
  # WORKDIR/budget.json so a resumed run keeps its schedule):
  t.budget_tokens = 0                   # > 0: num_steps = ceil(tokens / (global batch x S))
  t.budget_minutes = 0.0                # > 0: num_steps = train-step minutes / measured step time
  # Two-phase training as BERT did: steps after `phase2_start` use phase2 shapes (0 = one phase).
  t.phase2_start = 0
  # Or the second phase's start as a share of the steps (0 = use phase2_start): phase 2 from
  # step round(fraction x num_steps), num_steps after any budget (which covers both phases).
  t.phase2_fraction = 0.0
  t.phase2_max_seq_length = 512
  t.phase2_max_predictions_per_seq = 80
  t.phase2_global_batch_size = 0        # 0 = same as phase 1
  t.seed = 0
  t.log_every = 10
  t.eval_every = 200
  t.eval_batches = 10
  t.nan_policy = "stop"                 # stop | skip: what a non-finite loss does
  # Sum per-device gradients and metric sums in device order (all-gather, then add): params are
  # then bitwise the same however the devices are spread over processes (2 x 4 == 1 x 8), at the
  # cost of one gradient copy per device in memory. Off: XLA's all-reduce (order may differ).
  t.deterministic_reduce = False
  t.peak_tflops = 0.0                   # per-device peak for MFU (0 = known TPUs/GPUs only)

  c.mesh = m = ml_collections.ConfigDict()
  m.data = -1                           # devices on the data axis (-1 = all)
  m.fsdp = 1                            # reserved: parameter sharding axis

  c.checkpoint = k = ml_collections.ConfigDict()
  k.every_steps = 200
  k.keep = 3
  k.async_save = True
  k.best_metric = ""                    # e.g. eval_mlm_loss: also keep the best by this metric

  # Fine-tuning (`bertjax finetune`, bertjax/tasks): the task, its files, featurizing and
  # decoding. Steps, batch size, learning rate etc. come from train.* and optim.* as usual.
  c.finetune = f = ml_collections.ConfigDict()
  f.task = ""                           # registered task (sst2 cola mrpc rte qnli mnli qqp stsb
                                        #   tsv csv jsonl conll2003 pos squad); --task sets it
  f.data = ""                           # folder with the task's files; --data sets it
  f.init = ""                           # bertjax bundle or Hugging Face BERT dir ("" = random init)
  f.train_file = ""                     # file name/path inside `data` overriding the task default
  f.dev_file = ""                       # (e.g. eng.testa); absolute paths are taken as they are
  f.test_file = ""
  f.max_seq_length = 128                # S of every fine-tuning feature (<= model positions)
  f.num_epochs = 3.0                    # sets train.num_steps = ceil(epochs * examples / batch)
  f.eval_every = 0                      # steps between dev evaluations (0 = once per epoch)
  f.warmup_proportion = 0.1             # warmup steps as a fraction of all (< 0: optim.warmup_steps)
  f.max_train_examples = 0              # keep the first N training examples (0 = all)
  f.max_eval_examples = 0               # keep the first N dev examples (0 = all)
  f.eval_batch_size = 64                # sequences per evaluation batch
  f.text_column = "text"                # tsv/csv/jsonl: column (key) of the first text
  f.text_b_column = ""                  # tsv/csv/jsonl: column of the second text ("" = single)
  f.label_column = ""                   # tsv/csv/jsonl: label column ("" = label); CoNLL: ner |
                                        #   pos | chunk | column index ("" = the task's own)
  f.regression = False                  # tsv/csv/jsonl: labels are numbers (MSE, Pearson/Spearman)
  f.doc_stride = 128                    # SQuAD: tokens between the starts of context windows
  f.max_query_length = 64               # SQuAD: question tokens kept
  f.n_best = 20                         # SQuAD: start and end candidates per window
  f.max_answer_length = 30              # SQuAD: longest answer span, in tokens
  f.article_split = 0                   # SQuAD: >0 = first N articles of the dev file train, the
                                        #   rest evaluate (when no train file is at hand)
  f.freeze = "none"                     # none | encoder (linear probe: only the head trains) |
                                        #   embeddings (and the first freeze_layers layers)
  f.freeze_layers = 0                   # with freeze=embeddings: also freeze layers 0..k-1
  f.pooling = "pooler"                  # sentence(-pair) heads read: pooler (BERT's tanh(W h_CLS +
                                        #   b)) | cls (h_CLS) | mean (mean over the tokens)
  f.head_zeroinit = False               # the task head starts at zero (big_vision's head_zeroinit)
                                        #   instead of BERT's truncated normal: no random draw
  # How batches are laid out (bertjax.tasks.batching), for training and evaluation alike:
  # pack: several examples per row (block-diagonal attention, positions restarting per example)
  # | bucket: one example per row, rows cut to the smallest of bucket_lengths that fits the
  # batch | pad: every row max_seq_length long (the original BERT; slowest on short texts)
  f.batching = "pack"
  f.bucket_lengths = ""                 # bucket: comma-separated lengths ("" = 32, 64, ... doubling
                                        #   below max_seq_length, then max_seq_length)
  # pack: what one more compiled train-step shape costs, in rows of training. The run's row counts
  # are chosen from its own batches to minimise compiles x this + rows trained
  # (batching.plan_row_counts; a MiniLM step on a CPU core compiles in ~10 s, ~160 rows' time).
  # 0 = fixed row counts (1, 2, 3, 4, 6, 8, 12, ...).
  f.shape_cost_rows = 160.0
  f.write_predictions = True            # write dev predictions (and test: predict_test) at the end
  f.write_logits = False                # also write each dev split's raw head outputs beside its
                                        #   predictions (<file>.logits.npz: output_0, output_1, ...
                                        #   [F, ...] per feature), to decode or compare elsewhere
  f.predict_test = True                 # also read and predict the test split when its file exists
  return c


# Config fields a resumed run must share with its checkpoint: they fix the parameter shapes,
# the optimizer-state structure or the meaning of the saved data position. Everything else
# (num_steps, learning-rate schedule, logging, dtype, remat, device count ...) may change.
RESUME_KEYS = (
    "model.vocab_size", "model.hidden_size", "model.num_hidden_layers",
    "model.num_attention_heads", "model.intermediate_size", "model.max_position_embeddings",
    "model.type_vocab_size", "model.hidden_act", "model.fused_qkv",
    "data.corpus_format", "data.do_lower_case", "data.heldout_fraction", "data.max_seq_length",
    "data.max_predictions_per_seq", "data.masked_lm_prob", "data.short_seq_prob",
    "data.whole_word_masking", "data.seed",
    "train.global_batch_size", "train.seed", "train.phase2_start", "train.phase2_fraction",
    "train.phase2_max_seq_length", "train.phase2_max_predictions_per_seq",
    "train.phase2_global_batch_size",
    "optim.name",
)

PHASE2_SHAPES = ("train.phase2_max_seq_length", "train.phase2_max_predictions_per_seq",
                 "train.phase2_global_batch_size")
# Fields added to RESUME_KEYS after checkpoints were written without them: absent = this value.
RESUME_ADDED = {"train.phase2_fraction": 0.0}


def resume_values(cfg) -> dict:
  """{field: value} of `RESUME_KEYS` in `cfg` (a ConfigDict or dict; "<absent>" for a field it
  lacks): what the trainer hands the Checkpointer to compare with a checkpoint's config, whose
  saved config is read through this function too."""
  d = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg
  out = {}
  for key in RESUME_KEYS:
    v = d
    for part in key.split("."):
      v = v[part] if isinstance(v, dict) and part in v else RESUME_ADDED.get(key, "<absent>")
    out[key] = v
  if not (out["train.phase2_start"] or out["train.phase2_fraction"]):
    # one phase: the second phase's shapes never apply, so they need not match
    for key in PHASE2_SHAPES:
      out[key] = "<one phase>"
  return out


@functools.lru_cache(maxsize=None)
def fast_bf16() -> bool:
  """Does this machine run bf16 matmuls (f32 accumulation) faster than f32? TPUs; GPUs from
  Ampere on (compute capability 8.0: bf16 tensor cores); CPUs with AMX (Linux's amx_bf16 flag:
  oneDNN's bf16 kernels, ~5x f32 measured on Sapphire Rapids) or AVX512-BF16 (avx512_bf16:
  Zen 4 / Cooper Lake dot-product instructions; measured on a Zen 4 EPYC: the tiny demo's
  pretraining step 1.7x, a [1024, 384] x [384, 1536] matmul 1.5x). Not AVX2-only CPUs: there
  XLA:CPU converts bf16 to f32 around each op, slower than f32 alone."""
  forced = os.environ.get("BERTJAX_FAST_BF16", "").strip()
  if forced in ("0", "1"):   # pins `auto` (the test suite: f32, to compare with f32 references)
    return forced == "1"
  import jax
  backend = jax.default_backend()
  if backend == "tpu":
    return True
  if backend == "gpu":
    cc = getattr(jax.devices()[0], "compute_capability", "0")
    try:
      return float(cc) >= 8.0
    except ValueError:
      return False
  try:
    with open("/proc/cpuinfo") as f:
      return cpu_has_fast_bf16(f)
  except OSError:
    return False


def cpu_has_fast_bf16(cpuinfo_lines) -> bool:
  """True when a /proc/cpuinfo "flags" line lists amx_bf16 or avx512_bf16."""
  return any(line.startswith("flags") and bool({"amx_bf16", "avx512_bf16"} & set(line.split()))
             for line in cpuinfo_lines)


def resolve_dtype(name: str) -> str:
  """model.dtype: auto -> bfloat16 where `fast_bf16()`, else float32; others unchanged."""
  if name != "auto":
    return name
  return "bfloat16" if fast_bf16() else "float32"


def _parse_value(key: str, text: str, current):
  """Parse an override value into the type of the field it replaces."""
  if isinstance(current, bool):
    low = text.lower()
    if low in ("true", "1", "yes"):
      return True
    if low in ("false", "0", "no"):
      return False
    raise UserError(f"--config.{key}={text}: expected true or false")
  if isinstance(current, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    raise UserError(f"--config.{key}={text}: expected a {type(current).__name__}") from None
  if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if current is not None and not isinstance(value, type(current)):
    raise UserError(f"--config.{key}={text}: expected a {type(current).__name__}, "
                    f"got a {type(value).__name__}")
  return value


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += _all_keys(v, prefix + k + ".")
    else:
      keys.append(prefix + k)
  return keys


def set_key(cfg: ml_collections.ConfigDict, key: str, text: str) -> None:
  """Set a dotted key from its command-line text; unknown keys are errors with a suggestion."""
  node = cfg
  parts = key.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(key, _all_keys(cfg), n=1)
      hint = f"; did you mean --config.{close[0]}?" if close else ""
      raise UserError(f"unknown config key --config.{key}{hint}")
    if i < len(parts) - 1:
      node = node[part]
  current = node[parts[-1]]
  if isinstance(current, ml_collections.ConfigDict):
    raise UserError(f"--config.{key} is a section; set one of its fields")
  with node.unlocked():
    node[parts[-1]] = _parse_value(key, text, current)


def split_config_arg(path: str) -> tuple[str, str | None]:
  """'configs/bert.py:base' -> ('configs/bert.py', 'base'); a plain path -> (path, None).
  The argument is what follows the last ':' after '.py' (big_vision's `--config file.py:arg`)."""
  head, sep, arg = path.rpartition(":")
  if sep and head.endswith(".py") and not os.path.isfile(path):
    return head, arg
  return path, None


def config_module(path: str):
  """The Python module of config file `path` (for load_config, and for a config built on
  another one's get_config)."""
  if not os.path.isfile(path):
    raise UserError(f"config file not found: {path}")
  spec = importlib.util.spec_from_file_location(f"_bertjax_config_{abs(hash(path))}", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except UserError:
    raise
  except Exception as e:  # a broken config file is the user's to fix: name it
    raise UserError(f"{path}: failed to load: {type(e).__name__}: {e}") from None
  return module


def load_config(path: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Load `path` (a Python file with get_config(), or `file.py:arg` for get_config(arg)) and
  apply `key=value` overrides."""
  path, arg = split_config_arg(path)
  module = config_module(path)
  if not hasattr(module, "get_config"):
    raise UserError(f"{path}: defines no get_config()")
  if arg is None:
    cfg = module.get_config()
  else:
    if not inspect.signature(module.get_config).parameters:
      raise UserError(f"{path}:{arg}: this config's get_config() takes no argument; "
                      f"drop ':{arg}'")
    cfg = module.get_config(arg)
  check_known_keys(cfg, path)
  return apply_overrides(cfg, overrides)


def apply_overrides(cfg: ml_collections.ConfigDict,
                    overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
  """Lock `cfg` (no new fields from here on) and apply `--config.KEY=VALUE` overrides in order;
  returns it. The one place command-line overrides reach a config."""
  cfg.lock()
  for item in overrides:
    key, sep, text = item.partition("=")
    if not sep:
      raise UserError(f"override {item!r}: expected --config.KEY=VALUE")
    set_key(cfg, key.removeprefix("--").removeprefix("config."), text)
  return cfg


def check_known_keys(cfg: ml_collections.ConfigDict, path: str = "config") -> None:
  """A config file may only set fields that `base_config()` defines (catches typos in files)."""
  known = set(_all_keys(base_config()))
  for key in _all_keys(cfg):
    if key not in known:
      close = difflib.get_close_matches(key, sorted(known), n=1)
      hint = f"; did you mean {close[0]}?" if close else ""
      raise UserError(f"{path}: unknown config key {key}{hint}")


def two_phase(tcfg) -> bool:
  return bool(tcfg.phase2_start or tcfg.get("phase2_fraction", 0.0))


def phase2_start(tcfg) -> int:
  """The first step of phase 2 (0 = one phase): train.phase2_start, or round(phase2_fraction x
  num_steps) -- computed, never written back, so a resumed run given more steps (a larger
  budget) moves phase 2 with them instead of failing the checkpoint's config check."""
  fraction = tcfg.get("phase2_fraction", 0.0)
  return max(1, int(round(fraction * tcfg.num_steps))) if fraction > 0 else int(tcfg.phase2_start)


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Cheap consistency checks run before any compilation; each names the field and the fix."""
  m, d, t = cfg.model, cfg.data, cfg.train
  if m.hidden_size % m.num_attention_heads:
    raise UserError(f"model.hidden_size={m.hidden_size} is not divisible by "
                    f"model.num_attention_heads={m.num_attention_heads}; pick sizes that divide")
  for k in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
    # -1 (config_steps.FROM_INIT): fine-tuning's "the --init checkpoint's value".
    if not (0.0 <= m[k] < 1.0 or m[k] == -1.0):
      raise UserError(f"model.{k}={m[k]}: a dropout rate must be in [0, 1)")
  if m.dtype not in ("float32", "bfloat16", "auto"):
    raise UserError(f"model.dtype={m.dtype!r}: use float32, bfloat16 or auto")
  if m.attention_impl not in ("auto", "einsum", "cudnn", "xla"):  # xla: older name of einsum
    raise UserError(f"model.attention_impl={m.attention_impl!r}: use auto, einsum or cudnn")
  if m.hidden_act != "gelu":
    raise UserError(f"model.hidden_act={m.hidden_act!r}: bertjax implements BERT's exact GELU only; "
                    "use gelu")
  if not 0.0 <= t.phase2_fraction < 1.0:
    raise UserError(f"train.phase2_fraction={t.phase2_fraction}: use a share of the steps in "
                    "[0, 1) (0 = train.phase2_start decides)")
  if t.phase2_fraction and t.phase2_start:
    raise UserError(f"train.phase2_start={t.phase2_start} and train.phase2_fraction="
                    f"{t.phase2_fraction} both set: keep one")
  phases_2 = two_phase(t)
  seqs = [d.max_seq_length] + ([t.phase2_max_seq_length] if phases_2 else [])
  for s in seqs:
    if s > m.max_position_embeddings:
      raise UserError(f"sequence length {s} exceeds model.max_position_embeddings="
                      f"{m.max_position_embeddings}; lower data.max_seq_length "
                      f"(or train.phase2_max_seq_length) or raise max_position_embeddings")
  if d.max_predictions_per_seq > d.max_seq_length:
    raise UserError("data.max_predictions_per_seq exceeds data.max_seq_length")
  if t.grad_accum_steps < 1:
    raise UserError("train.grad_accum_steps must be >= 1")
  if num_devices:
    batches = [t.global_batch_size] + ([t.phase2_global_batch_size]
                                       if phases_2 and t.phase2_global_batch_size else [])
    for b in batches:
      if b % (num_devices * t.grad_accum_steps):
        raise UserError(
            f"train.global_batch_size={b} is not divisible by devices ({num_devices}) x "
            f"train.grad_accum_steps ({t.grad_accum_steps}); use a multiple of "
            f"{num_devices * t.grad_accum_steps}")
  if phases_2 and t.phase2_max_predictions_per_seq > t.phase2_max_seq_length:
    raise UserError("train.phase2_max_predictions_per_seq exceeds train.phase2_max_seq_length")
  if t.num_steps < 1 or t.log_every < 1:
    raise UserError("train.num_steps and train.log_every must be >= 1")
  if t.nan_policy not in ("stop", "skip"):
    raise UserError(f"train.nan_policy={t.nan_policy!r}: use stop or skip")
  if cfg.optim.name not in ("adamw", "lamb"):
    raise UserError(f"optim.name={cfg.optim.name!r}: use adamw or lamb")
  if not 0.0 < cfg.optim.layer_lr_decay <= 1.0:
    raise UserError(f"optim.layer_lr_decay={cfg.optim.layer_lr_decay}: use a value in (0, 1] "
                    "(1 = off; 0.9 is typical for fine-tuning)")
  o = cfg.optim
  if o.schedule not in ("linear", "cosine", "wsd", "one_cycle"):
    raise UserError(f"optim.schedule={o.schedule!r}: use linear, cosine, wsd or one_cycle")
  if not 0.0 <= o.warmup_fraction < 1.0 or not 0.0 <= o.decay_fraction <= 1.0:
    raise UserError(f"optim.warmup_fraction={o.warmup_fraction} must be in [0, 1) and "
                    f"optim.decay_fraction={o.decay_fraction} in [0, 1]")
  if d.objective not in ("nsp", "mlm"):
    raise UserError(f"data.objective={d.objective!r}: use nsp or mlm")
  for name in ("masked_lm_prob", "eval_masked_lm_prob"):
    if not 0.0 < d[name] < 1.0:
      raise UserError(f"data.{name}={d[name]}: use a rate in (0, 1), e.g. 0.15 or 0.3")
  if not 0.0 <= d.masked_lm_prob_end < 1.0:
    raise UserError(f"data.masked_lm_prob_end={d.masked_lm_prob_end}: use a rate in (0, 1), or 0 "
                    "for a constant rate")
  if min(d.mask_token_prob, d.random_token_prob) < 0 or d.mask_token_prob + d.random_token_prob > 1:
    raise UserError(f"data.mask_token_prob={d.mask_token_prob} + data.random_token_prob="
                    f"{d.random_token_prob}: use non-negative shares that sum to at most 1")
  if d.max_predictions_per_seq < 0:
    raise UserError(f"data.max_predictions_per_seq={d.max_predictions_per_seq}: use >= 1, or 0 to "
                    "derive it from the masking rate")
  if t.budget_tokens < 0 or t.budget_minutes < 0:
    raise UserError("train.budget_tokens and train.budget_minutes must be >= 0 (0 = off)")
  if t.budget_tokens and t.budget_minutes:
    raise UserError(f"train.budget_tokens={t.budget_tokens} and train.budget_minutes="
                    f"{t.budget_minutes}: set one budget, not both")
