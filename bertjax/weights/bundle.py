"""The bertjax export format ("bundle"): everything fine-tuning needs, in one directory.

  OUT/
    params.safetensors   the params, flat keys joined by '/' (e.g.
                         bert/layer_0/attention/query/kernel), float32: a pretraining tree
                         (BertForPreTraining, or without 'nsp' after MLM-only pretraining) or a
                         fine-tuned one ({'bert', 'classifier' | 'qa_outputs'}, bertjax/heads.py)
    model_config.json    our model ConfigDict (bertjax/config.py: model_config)
    bundle.json          {"format": "bertjax-bundle", "version": 1, "tokenizer": kind,
                          "tokenizer_file": name, "do_lower_case": bool, "source": ..., "step": ...,
                          "architecture": transformers class, "head": fine-tuned head or null,
                          "card": what the model card says (task, metrics, command, config)}
    tokenizer/           spm.model (SentencePiece) or vocab.txt (WordPiece), copied

A fine-tuned bundle's "head" is {"family", "task", "labels", "pooling"} (bertjax/weights/interop/);
`bertjax export --format hf` turns the bundle into the matching transformers class.

Written atomically (a temp dir renamed into place), so a failed export leaves nothing behind.
`load_pretrained` reads either a bundle or a Hugging Face BERT directory.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
from typing import Iterable

import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bertjax.data.tokenizer import tokenizer_kind
from bertjax.weights import interop
from bertjax.weights.atomic import atomic_dir
from bertjax.config import model_config
from bertjax.errors import UserError

FORMAT = "bertjax-bundle"
VERSION = 1
PARAMS = "params.safetensors"
MODEL_CONFIG = "model_config.json"
BUNDLE = "bundle.json"
TOKENIZER_DIR = "tokenizer"


def is_bundle(path: str) -> bool:
  return os.path.isfile(os.path.join(path, BUNDLE))


def save_bundle(out_dir: str, params, model_cfg, tokenizer_files: Iterable[str],
                meta: dict | None = None, overwrite: bool = False) -> str:
  """Write a bundle. meta: extra JSON fields for bundle.json (source, step, do_lower_case...)."""
  tokenizer_files = [str(p) for p in tokenizer_files]
  for path in tokenizer_files:
    if not os.path.isfile(path):
      raise UserError(f"{path}: tokenizer file not found")
  kind = tokenizer_kind(tokenizer_files)
  main = [p for p in tokenizer_files
          if os.path.basename(p) == "vocab.txt" or p.endswith(".model")]
  info = {"format": FORMAT, "version": VERSION, "tokenizer": kind,
          "tokenizer_file": os.path.basename(main[0]) if main else None,
          "do_lower_case": True, "source": None, "step": None}
  info.update(meta or {})
  head = info.get("head")
  arch = interop.architecture(params, head)
  interop.check_params(params, model_cfg, arch, head, "params",
                       pooler_optional=arch in interop.NO_POOLER)
  info["architecture"] = arch
  flat = {"/".join(p): np.ascontiguousarray(np.asarray(v, np.float32))
          for p, v in interop.flatten(dict(params)).items()}
  with atomic_dir(out_dir, overwrite) as tmp:
    save_file(flat, os.path.join(tmp, PARAMS), metadata={"format": FORMAT})
    with open(os.path.join(tmp, MODEL_CONFIG), "w") as f:
      f.write(model_cfg.to_json(indent=2, sort_keys=True))
    with open(os.path.join(tmp, BUNDLE), "w") as f:
      json.dump(info, f, indent=2)
    os.makedirs(os.path.join(tmp, TOKENIZER_DIR))
    for path in tokenizer_files:
      shutil.copyfile(path, os.path.join(tmp, TOKENIZER_DIR, os.path.basename(path)))
  return os.path.abspath(out_dir)


def _need(path: str) -> str:
  if not os.path.isfile(path):
    raise UserError(f"{path}: not found; is {os.path.dirname(path)} a complete bertjax bundle "
                    f"(bertjax export) ?")
  return path


def _model_config_from_json(path: str) -> ml_collections.ConfigDict:
  try:
    with open(path) as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: invalid JSON: {e}") from None
  cfg = model_config("mini")  # defaults for fields a bundle from an older bertjax lacks
  for key, value in data.items():
    if key not in cfg:
      raise UserError(f"{path}: unknown model field {key!r}; written by a newer bertjax?")
    cfg[key] = type(cfg[key])(value) if isinstance(cfg[key], float) else value
  return cfg


def load_bundle(bundle_dir: str):
  """-> (params tree of float32 numpy arrays, model_cfg, tokenizer_path, meta dict)."""
  info_path = _need(os.path.join(bundle_dir, BUNDLE))
  try:
    with open(info_path) as f:
      meta = json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{info_path}: invalid JSON: {e}") from None
  if meta.get("format") != FORMAT:
    raise UserError(f"{info_path}: format={meta.get('format')!r}, expected {FORMAT!r}")
  if meta.get("version", 0) > VERSION:
    raise UserError(f"{info_path}: bundle version {meta['version']} is newer than this "
                    f"bertjax reads ({VERSION}); upgrade bertjax")
  model_cfg = _model_config_from_json(_need(os.path.join(bundle_dir, MODEL_CONFIG)))
  params_path = _need(os.path.join(bundle_dir, PARAMS))
  flat = {}
  try:
    with safe_open(params_path, framework="numpy") as f:
      for name in f.keys():
        flat[tuple(name.split("/"))] = f.get_tensor(name)
  except Exception as e:
    raise UserError(f"{params_path}: cannot read as safetensors: {e}") from None
  params = interop.unflatten(flat)
  head = meta.get("head")
  arch = interop.architecture(params, head)
  interop.check_params(params, model_cfg, arch, head, params_path,
                       pooler_optional=arch in interop.NO_POOLER)
  tokenizer_path = None
  if meta.get("tokenizer_file"):
    tokenizer_path = _need(os.path.join(bundle_dir, TOKENIZER_DIR, meta["tokenizer_file"]))
  return params, model_cfg, tokenizer_path, meta


def _hf_tokenizer(hf_dir: str) -> str:
  for name in ("vocab.txt", "spm.model"):
    path = os.path.join(hf_dir, name)
    if os.path.isfile(path):
      return path
  raise UserError(f"{os.path.join(hf_dir, 'vocab.txt')}: not found (nor spm.model); bertjax "
                  f"needs the checkpoint's tokenizer vocabulary")


def load_pretrained(path: str):
  """A bertjax bundle or a Hugging Face BERT directory -> (params, model_cfg, tokenizer_path)."""
  if not os.path.isdir(path):
    raise UserError(f"{path}: not a directory; pass a bertjax bundle (bertjax export) or a "
                    f"Hugging Face BERT directory")
  if is_bundle(path):
    params, model_cfg, tokenizer_path, _ = load_bundle(path)
    if tokenizer_path is None:
      raise UserError(f"{os.path.join(path, BUNDLE)}: the bundle has no tokenizer")
    return params, model_cfg, tokenizer_path
  if os.path.isfile(os.path.join(path, interop.CONFIG)):
    tokenizer_path = _hf_tokenizer(path)
    params, model_cfg, _ = interop.load_hf(path)
    return params, model_cfg, tokenizer_path
  raise UserError(f"{path}: neither {BUNDLE} (bertjax bundle) nor {interop.CONFIG} (Hugging "
                  f"Face) found")


def load_encoder(path: str):
  """--init for fine-tuning / features -> (params, model_cfg, tokenizer_path, do_lower_case).

  Only the encoder is used downstream, so the missing-pretraining-heads warning that
  `interop.load_hf` gives for encoder-only checkpoints (e.g. BertModel) is not repeated here."""
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r".*the checkpoint has no mlm")
    params, model_cfg, tok_path = load_pretrained(path)
  if is_bundle(path):
    with open(os.path.join(path, BUNDLE)) as fh:
      lower = bool(json.load(fh).get("do_lower_case", True))
  else:
    lower = hf_do_lower_case(path)
  return params, model_cfg, tok_path, lower


def load_head(path: str, family: str, labels, pooling: str = "pooler") -> dict | None:
  """The task head of a fine-tuned bundle or HF directory, when it is the one a fine-tuning
  run builds (same family, same labels in the same order, same pooling): {"classifier" |
  "qa_outputs": params}; else None (the run starts a fresh head)."""
  if is_bundle(path):
    params, _, _, meta = load_bundle(path)
    head = meta.get("head")
  elif os.path.isfile(os.path.join(path, interop.CONFIG)):
    params, _, head, _ = interop.load_hf_model(path)
  else:
    return None  # a workdir: pretraining --init-from only
  if head is None or head["family"] != family or head.get("pooling", "pooler") != pooling:
    return None
  if family in ("classification", "tagging") and list(head["labels"]) != list(labels or []):
    return None
  name = "qa_outputs" if family == "span" else "classifier"
  return {name: params[name]}


def hf_do_lower_case(hf_dir: str, default: bool = True) -> bool:
  """do_lower_case from an HF directory's tokenizer_config.json (BERT's default: True)."""
  path = os.path.join(hf_dir, "tokenizer_config.json")
  if os.path.isfile(path):
    try:
      with open(path) as f:
        return bool(json.load(f).get("do_lower_case", default))
    except json.JSONDecodeError:
      return default
  return default
