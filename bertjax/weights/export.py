"""`bertjax export SRC OUT`: any bertjax model out, as a bundle or as its transformers class.

SRC is any of
  a pretraining workdir (or checkpoints/<step>)  -> BertForPreTraining, or BertForMaskedLM
                                                    without an NSP head
  a fine-tuning workdir (`bertjax finetune`)      -> BertForSequenceClassification (GLUE, STS-B
                                                    regression), BertForTokenClassification
                                                    (CoNLL, POS), BertForQuestionAnswering (SQuAD)
  a bertjax bundle (export, import-hf)            -> the class it holds
  a Hugging Face BERT directory                   -> the class it is
and OUT is a bundle (--format bertjax) or a Hugging Face directory (--format hf: config.json,
model.safetensors, tokenizer files; bertjax/weights/interop/). Both carry a model card: README.md in
the HF directory, the "card" entry of bundle.json (which a later HF export turns into README.md).

A fine-tuned model's head (family, task, label names in id order, pooling) is what
`bertjax finetune` recorded in WORKDIR/task.json when it finished training (`write_task_record`),
with the tokenizer it really used (WORKDIR/task_tokenizer/). For a workdir without that record
the head is rebuilt from the task's registry entry and its training file, as fine-tuning built
it. The tokenizer exported is the one whose SHA-256 the checkpoint recorded, wherever found.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import subprocess
import warnings
from typing import Any, Optional

import numpy as np

import bertjax
from bertjax.weights import interop
from bertjax.weights import bundle
from bertjax.data.tokenizer import file_sha256, tokenizer_files
from bertjax.errors import UserError

TASK_RECORD = "task.json"
TASK_TOKENIZER = "task_tokenizer"
EVAL_RESULTS = "eval_results.json"


# --------------------------------------------------------------- provenance

@functools.lru_cache(maxsize=1)
def bertjax_commit() -> Optional[str]:
  """The git commit of the bertjax source in use (`-dirty` with local edits), else None."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(bertjax.__file__)))
  try:
    out = subprocess.run(["git", "-C", root, "describe", "--always", "--dirty", "--abbrev=12"],
                         capture_output=True, text=True, timeout=10)
  except (OSError, subprocess.SubprocessError):
    return None
  return (out.stdout.strip() or None) if out.returncode == 0 else None


def task_head(job) -> dict:
  """The head of a `bertjax.tasks.finetune.FinetuneJob`, as interop and bundles describe it."""
  return {"family": job.spec.family, "task": job.spec.name,
          "labels": list(job.labels) if job.labels else None,
          "pooling": job.cfg.finetune.pooling}


def write_task_record(workdir: str, job, command: Optional[list[str]] = None) -> None:
  """WORKDIR/task.json (head, command, bertjax commit) and WORKDIR/task_tokenizer/ (the
  tokenizer fine-tuning really used): what `bertjax export` needs besides the checkpoint.
  Called by `bertjax.tasks.finetune.run` on process 0 once training ends (an export taken
  before that rebuilds the head from the task's data, `_rebuilt_head`)."""
  os.makedirs(os.path.join(workdir, TASK_TOKENIZER), exist_ok=True)
  files = []
  for src in job.tokenizer.files():
    rel = os.path.join(TASK_TOKENIZER, os.path.basename(src))
    dst = os.path.join(workdir, rel)
    shutil.copyfile(src, dst + ".tmp")
    os.replace(dst + ".tmp", dst)
    files.append(rel)
  record = {"head": task_head(job), "command": command, "bertjax_commit": bertjax_commit(),
            "bertjax_version": bertjax.__version__, "tokenizer_files": files,
            "do_lower_case": bool(job.tokenizer.do_lower_case)}
  path = os.path.join(workdir, TASK_RECORD)
  with open(path + ".tmp", "w") as f:
    json.dump(record, f, indent=2)
  os.replace(path + ".tmp", path)


# --------------------------------------------------------------- reading a source

@dataclasses.dataclass
class Source:
  params: dict                    # float32 numpy tree
  model_cfg: Any
  tokenizer_files: list
  do_lower_case: bool
  head: Optional[dict]            # None: a pretraining tree
  card: dict                      # what the model card says (see `model_card`)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: invalid JSON: {e}") from None


def _rebuilt_head(cfg: dict, where: str) -> dict:
  """The head of a fine-tuning run without task.json: its registry entry, and the label set of
  its training file (read as `bertjax.tasks.finetune.build` read it)."""
  import dataclasses as dc  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  from bertjax.tasks import families, registry  # noqa: PLC0415
  f = ml_collections.ConfigDict(cfg["finetune"])
  spec = registry.get(f.task)
  if spec.family == "classification" and spec.labels is None and f.get("regression"):
    spec = dc.replace(spec, family="regression")
  labels = None
  if spec.family in ("classification", "tagging"):
    labels = list(spec.labels) if spec.labels is not None else None
    if labels is None:
      if not f.data or not os.path.isdir(f.data):
        raise UserError(f"{where}: has no {TASK_RECORD} and the training data {f.data!r} is "
                        f"gone, so the label names are unknown; put the data back at that path")
      train = spec.read(f.data, "train", f)
      if f.get("max_train_examples"):
        train = train[:f.max_train_examples]
      labels = families.get(spec.family).labels(spec, train)
  return {"family": spec.family, "task": spec.name, "labels": labels,
          "pooling": f.get("pooling", "pooler")}


def _workdir_tokenizer(root: str, meta: dict, cfg: dict, record: dict, where: str) -> list[str]:
  """The tokenizer files of a run: the first candidate whose SHA-256 is the one the checkpoint
  recorded (the fine-tuning record, the workdir's copy, --init's, data.tokenizer)."""
  tok = meta.get("tokenizer") or {}
  want = tok.get("sha256")
  candidates = []
  if record.get("tokenizer_files"):
    candidates.append([os.path.join(root, r) for r in record["tokenizer_files"]])
  if tok.get("files"):
    candidates.append([os.path.join(root, r) for r in tok["files"]])
  init = (cfg.get("finetune") or {}).get("init")
  if init and os.path.isdir(init):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, _, path, _ = bundle.load_encoder(init)
      candidates.append(tokenizer_files(path))
    except UserError:
      pass
  original = (cfg.get("data") or {}).get("tokenizer")
  if isinstance(original, str) and os.path.isfile(original):
    candidates.append(tokenizer_files(original))
  for files in candidates:
    if files and all(os.path.isfile(p) for p in files) and (
        want is None or file_sha256(files[0]) == want):
      return files
  found = ", ".join(c[0] for c in candidates) or "none"
  raise UserError(f"{where}: none of the tokenizer files found ({found}) has the SHA-256 the "
                  f"checkpoint recorded ({want}); copy the run's tokenizer back to {original}")


def _from_workdir(path: str, step: Optional[int]) -> Source:
  import jax  # noqa: PLC0415
  import ml_collections  # noqa: PLC0415
  from bertjax import checkpoint  # noqa: PLC0415
  params, meta, step = checkpoint.restore_params(path, step)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
  cfg = meta.get("config") or {}
  if "model" not in cfg:
    raise UserError(f"{path}: checkpoint step {step} has no model config in its metadata")
  model_cfg = ml_collections.ConfigDict(cfg["model"])
  root = os.path.abspath(path)
  if not os.path.isdir(os.path.join(root, checkpoint.CHECKPOINT_DIR)):
    root = os.path.dirname(os.path.dirname(root))  # a checkpoints/<step> dir
  record_path = os.path.join(root, TASK_RECORD)
  record = _read_json(record_path) if os.path.isfile(record_path) else {}
  finetuned = bool((cfg.get("finetune") or {}).get("task")) and "bert" in params and (
      "classifier" in params or "qa_outputs" in params)
  head = None
  if finetuned:
    head = record.get("head") or _rebuilt_head(cfg, root)
  files = _workdir_tokenizer(root, meta, cfg, record, root)
  tok = meta.get("tokenizer") or {}
  lower = tok.get("do_lower_case", record.get("do_lower_case",
                                              (cfg.get("data") or {}).get("do_lower_case", True)))
  # Dev metrics: the final evaluation when this is the run's last step, else the evaluation
  # saved with this checkpoint.
  metrics = meta.get("metrics")
  results_path = os.path.join(root, EVAL_RESULTS)
  latest = max(int(d) for d in os.listdir(os.path.join(root, checkpoint.CHECKPOINT_DIR))
               if d.isdigit())
  if os.path.isfile(results_path) and step == latest:
    metrics = _read_json(results_path).get("results") or metrics
  card = {"source": root, "step": int(step), "task": head["task"] if head else "pretraining",
          "metrics": metrics, "command": record.get("command"), "config": cfg,
          "trained_with": {"bertjax_version": meta.get("bertjax_version"),
                           "bertjax_commit": record.get("bertjax_commit")}}
  return Source(params, model_cfg, files, bool(lower), head, card)


def load_source(path: str, step: Optional[int] = None) -> Source:
  """Any exportable directory -> Source (see the module docstring)."""
  from bertjax import checkpoint  # noqa: PLC0415
  if not os.path.isdir(path):
    raise UserError(f"{path}: not a directory; pass a bertjax workdir, a checkpoints/<step> "
                    f"dir, a bertjax bundle or a Hugging Face BERT directory")
  is_ckpt = os.path.isdir(os.path.join(path, checkpoint.CHECKPOINT_DIR)) or (
      os.path.isdir(os.path.join(path, "state")) and os.path.isdir(os.path.join(path, "meta")))
  if step is not None and not is_ckpt:
    raise UserError(f"--step {step}: {path} is not a workdir; only workdirs have steps")
  if is_ckpt:
    return _from_workdir(path, step)
  if bundle.is_bundle(path):
    params, model_cfg, tok_path, meta = bundle.load_bundle(path)
    card = dict(meta.get("card") or {})
    card.setdefault("source", meta.get("source"))
    card.setdefault("step", meta.get("step"))
    return Source(params, model_cfg, [tok_path] if tok_path else [],
                  bool(meta.get("do_lower_case", True)), meta.get("head"), card)
  if os.path.isfile(os.path.join(path, interop.CONFIG)):
    params, model_cfg, head, fresh = interop.load_hf_model(path)
    card = {"source": f"hf:{os.path.abspath(path)}", "task": head["task"] if head else None,
            "fresh": fresh}
    return Source(params, model_cfg, [bundle._hf_tokenizer(path)],
                  bundle.hf_do_lower_case(path), head, card)
  raise UserError(f"{path}: no checkpoints here (no {checkpoint.CHECKPOINT_DIR}/), and not a "
                  f"bundle ({bundle.BUNDLE}) nor a Hugging Face directory ({interop.CONFIG}); "
                  f"pass a workdir, a bundle or an HF directory")


# --------------------------------------------------------------- the model card

def _fmt(v) -> str:
  return f"{v:.4g}" if isinstance(v, float) else str(v)


def model_card(src: Source, arch: str) -> str:
  """README.md of an export: the task, dev metrics, the training command and config, the
  bertjax commit (of the training run when recorded, and of the export)."""
  c = src.card
  head = src.head
  task = c.get("task") or ("pretraining" if head is None else "fine-tuned")
  tag = interop.PIPELINE_TAGS[arch]
  lines = ["---", "library_name: transformers", f"pipeline_tag: {tag}",
           "tags: [bert, bertjax]", "---", "",
           f"# {task}: a bertjax BERT as `{arch}`", ""]
  m = src.model_cfg
  lines += [f"BERT with {m.num_hidden_layers} layers, hidden size {m.hidden_size}, "
            f"{m.num_attention_heads} heads, vocabulary {m.vocab_size}, trained with bertjax "
            f"(JAX/Flax) and converted to transformers' `{arch}`.", ""]
  lines += ["## Task", ""]
  if head is None:
    lines += ["Pretraining: masked language modelling" +
              (" and next sentence prediction." if arch == interop.PRETRAINING else
               " only (no NSP head)." if arch == interop.MASKED_LM else "."), ""]
  else:
    lines += [f"`{head['task']}` ({head['family']})."]
    if head["family"] in ("classification", "tagging"):
      lines += [f"Labels (id: name): " + ", ".join(f"{i}: `{l}`" for i, l in
                                                   enumerate(head["labels"])) + "."]
    if head["family"] == "regression":
      lines += ["One output, the regression score (`problem_type: regression`)."]
    lines += ["", f"```python\nfrom transformers import pipeline\npipe = pipeline(\"{tag}\", "
                  f"model=\"PATH\")\n```", ""]
  lines += ["## Dev metrics", ""]
  metrics = c.get("metrics")
  if metrics:
    rows = []
    for k, v in metrics.items():
      if isinstance(v, dict):
        rows += [(f"{k} {kk}", vv) for kk, vv in v.items()]
      else:
        rows.append((k, v))
    lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in rows]
  else:
    lines += ["None recorded with this checkpoint."]
  lines += ["", "## Training", ""]
  if c.get("source"):
    step = f", step {c['step']}" if c.get("step") is not None else ""
    lines += [f"Exported from `{c['source']}`{step}."]
  if c.get("fresh"):
    lines += [f"Initialised fresh on import (absent from the source): {', '.join(c['fresh'])}."]
  cmd = c.get("command")
  lines += ["", "Command:", "", "```", " ".join(cmd) if cmd else "(not recorded)", "```"]
  if c.get("config"):
    lines += ["", "Config:", "", "```json", json.dumps(c["config"], indent=1, sort_keys=True,
                                                      default=str), "```"]
  trained = c.get("trained_with") or {}
  lines += ["", "## bertjax", "",
            f"Trained with bertjax {trained.get('bertjax_version') or '?'}, commit "
            f"{trained.get('bertjax_commit') or '(not recorded)'}; exported with bertjax "
            f"{bertjax.__version__}, commit {bertjax_commit() or '(not a git checkout)'}."]
  return "\n".join(lines) + "\n"


# --------------------------------------------------------------- writing

def export(src_path: str, out_dir: str, fmt: str = "bertjax", step: Optional[int] = None,
           overwrite: bool = False) -> tuple[str, str, Source]:
  """SRC -> OUT in `fmt` (bertjax | hf). Returns (out path, transformers class, source)."""
  if fmt not in ("bertjax", "hf"):
    raise UserError(f"--format {fmt}: use bertjax or hf")
  src = load_source(src_path, step)
  arch = interop.architecture(src.params, src.head)
  if fmt == "hf":
    out = interop.save_hf(src.params, src.model_cfg, out_dir, src.tokenizer_files,
                          do_lower_case=src.do_lower_case, overwrite=overwrite, head=src.head,
                          readme=model_card(src, arch))
  else:
    meta = {"source": src.card.get("source"), "step": src.card.get("step"),
            "do_lower_case": src.do_lower_case, "head": src.head, "card": src.card,
            "bertjax_version": bertjax.__version__}
    out = bundle.save_bundle(out_dir, src.params, src.model_cfg, src.tokenizer_files, meta,
                             overwrite=overwrite)
  return out, arch, src
