"""Reading a Hugging Face BERT directory (safetensors only) as the class it is (`read_hf`), or
as a pretraining tree (`load_hf`); heads the source lacks are initialised fresh."""
from __future__ import annotations

import json
import os
import re
import warnings

import jax
import numpy as np
from safetensors import safe_open

from bertjax.errors import UserError
from bertjax.weights.interop.config import head_from_hf, model_config_from_hf
from bertjax.weights.interop.layout import (_HEADS, _IGNORED, BASE, CONFIG, MASKED_LM, PRETRAINING, QA,
                                       SAFE_INDEX, SAFE_WEIGHTS, SEQUENCE, TOKEN, expected_shapes,
                                       fresh_param, hf_name, param_shapes, unflatten)


def _normalise(name: str) -> str:
  """A tensor name as found in an HF file -> the BertForPreTraining spelling we map from."""
  if name.endswith(".gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith(".beta"):
    name = name[:-len("beta")] + "bias"
  if re.match(r"(embeddings|encoder|pooler)\.", name):
    name = "bert." + name  # BertModel checkpoints have no prefix
  return name



def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise UserError(f"{path}: not found; a Hugging Face BERT directory needs {os.path.basename(path)}")
  try:
    with open(path) as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path}: invalid JSON: {e}") from None


def _read_tensors(hf_dir: str) -> dict[str, tuple[np.ndarray, str]]:
  """{name: (array, file)} from model.safetensors or the shards an index names."""
  single = os.path.join(hf_dir, SAFE_WEIGHTS)
  index = os.path.join(hf_dir, SAFE_INDEX)
  if os.path.isfile(single):
    files = [single]
  elif os.path.isfile(index):
    weight_map = _read_json(index).get("weight_map")
    if not isinstance(weight_map, dict):
      raise UserError(f"{index}: has no weight_map; is it a safetensors index?")
    files = [os.path.join(hf_dir, f) for f in sorted(set(weight_map.values()))]
  else:
    other = [f for f in ("pytorch_model.bin", "tf_model.h5", "flax_model.msgpack")
             if os.path.isfile(os.path.join(hf_dir, f))]
    hint = (f"; found {other[0]}, which bertjax does not read (no pickle): convert it to "
            f"safetensors first" if other else "")
    raise UserError(f"{single}: not found (nor {SAFE_INDEX}){hint}")
  tensors = {}
  for path in files:
    if not os.path.isfile(path):
      raise UserError(f"{path}: not found; {SAFE_INDEX} names it")
    try:
      with safe_open(path, framework="numpy") as f:
        for name in f.keys():
          tensors[name] = (f.get_tensor(name), path)
    except UserError:
      raise
    except Exception as e:  # a truncated or non-safetensors file
      raise UserError(f"{path}: cannot read as safetensors: {e}") from None
  return tensors


def _class_of(names: set[str], hf: dict, where: str) -> str:
  """Which class a checkpoint is, from its tensor names. config.json's `architectures` is often
  stale for the pretraining heads (bert-base-uncased says BertForMaskedLM and holds the NSP
  head), so only the task heads consult it: it tells sequence from token classification."""
  archs = [str(a) for a in hf.get("architectures") or []]
  if "qa_outputs.weight" in names or "qa_outputs.bias" in names:
    return QA
  if "classifier.weight" in names or "classifier.bias" in names:
    if any(a.endswith("TokenClassification") for a in archs):
      return TOKEN
    if any(a.endswith("SequenceClassification") for a in archs):
      return SEQUENCE
    raise UserError(f"{where}: unexpected tensor 'classifier.weight'; config.json's "
                    f"architectures {archs} names neither {SEQUENCE} nor {TOKEN}, so bertjax "
                    f"cannot tell which head it is")
  if "cls.seq_relationship.weight" in names:
    return PRETRAINING
  if "cls.predictions.bias" in names or "cls.predictions.transform.dense.weight" in names:
    return MASKED_LM
  return BASE


def read_hf(hf_dir: str):
  """Read an HF BERT directory as the class it is -> (found, model_cfg, arch, head, missing).

  found: {bertjax path: float32 array} of what the checkpoint holds; arch: its transformers
  class (module docstring); head: the fine-tuning head its config describes, or None;
  missing: paths of `arch`'s bertjax tree it lacks (the pooler, pretraining heads), for the
  caller to initialise. Encoder or task-head weights missing are a UserError.
  """
  if not os.path.isdir(hf_dir):
    raise UserError(f"{hf_dir}: not a directory; pass a Hugging Face BERT checkpoint directory")
  config_path = os.path.join(hf_dir, CONFIG)
  hf = _read_json(config_path)
  model_cfg = model_config_from_hf(hf, config_path)
  raw = _read_tensors(hf_dir)
  arch = _class_of({_normalise(n) for n in raw}, hf, os.path.join(hf_dir, SAFE_WEIGHTS))
  head = None
  if arch in (SEQUENCE, TOKEN, QA):
    name = "qa_outputs.bias" if arch == QA else "classifier.bias"
    bias = next((a for n, (a, _) in raw.items() if _normalise(n) == name), None)
    if bias is None:
      raise UserError(f"{hf_dir}: {name} is missing; the checkpoint's task head is incomplete")
    head = head_from_hf(hf, arch, int(bias.shape[0]), config_path)
  shapes = expected_shapes(model_cfg, arch, head)
  wanted = {}  # HF name -> (path, transpose)
  for path in shapes:
    name, transpose = hf_name(path)
    wanted[name] = (path, transpose)

  found: dict[tuple[str, ...], np.ndarray] = {}
  decoder = {}  # tied duplicates, checked after the loop
  for orig, (array, file) in raw.items():
    name = _normalise(orig)
    if orig in _IGNORED or name.removeprefix("bert.") in _IGNORED:
      continue
    if name in ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"):
      decoder[name] = (orig, array, file)
      continue
    if name not in wanted:
      raise UserError(f"{file}: unexpected tensor {orig!r} {tuple(array.shape)} in a {arch}; "
                      f"bertjax reads the BERT classes of bertjax/weights/interop/ only")
    path, transpose = wanted[name]
    value = np.asarray(array, np.float32)
    value = value.T if transpose else value
    if tuple(value.shape) != shapes[path]:
      expect = shapes[path][::-1] if transpose else shapes[path]
      raise UserError(f"{file}: tensor {orig!r} has shape {tuple(array.shape)}, config.json "
                      f"implies {tuple(expect)}; the weights and config.json disagree")
    found[path] = np.ascontiguousarray(value)

  # The MLM decoder is tied to the word embeddings (bertjax cannot hold an untied one).
  word = found.get(("bert", "embeddings", "word_embeddings"))
  if "cls.predictions.decoder.weight" in decoder:
    orig, array, file = decoder["cls.predictions.decoder.weight"]
    if word is not None and (array.shape != word.shape
                             or not np.array_equal(np.asarray(array, np.float32), word)):
      raise UserError(f"{file}: {orig!r} differs from the word embeddings; bertjax ties the MLM "
                      f"decoder to them, so an untied checkpoint cannot be imported")
  if "cls.predictions.decoder.bias" in decoder:
    orig, array, file = decoder["cls.predictions.decoder.bias"]
    bias = found.get(("mlm_output_bias",))
    vocab = (model_cfg.vocab_size,)
    if bias is None:
      if tuple(array.shape) != vocab:
        raise UserError(f"{file}: tensor {orig!r} has shape {tuple(array.shape)}, expected "
                        f"{vocab}")
      found[("mlm_output_bias",)] = np.asarray(array, np.float32)
    elif not np.array_equal(np.asarray(array, np.float32), bias):
      raise UserError(f"{file}: {orig!r} differs from cls.predictions.bias; they must be tied")

  missing = [p for p in shapes if p not in found]
  required = [p for p in missing if p[0] not in _HEADS and p[:2] != ("bert", "pooler")]
  if required:
    names = ", ".join(hf_name(p)[0].removeprefix("bert.") for p in required[:4])
    more = f" (+{len(required) - 4} more)" if len(required) > 4 else ""
    raise UserError(f"{hf_dir}: weights missing from the checkpoint: {names}{more}")
  return found, model_cfg, arch, head, missing


def _fill_fresh(found: dict, shapes: dict, model_cfg, seed: int, hf_dir: str, warn: bool):
  """found + BERT-init values for the paths of `shapes` it lacks -> (tree, fresh names)."""
  missing = [p for p in shapes if p not in found]
  key = jax.random.PRNGKey(seed)
  out = dict(found)
  for i, path in enumerate(missing):
    out[path] = fresh_param(path, shapes[path], model_cfg, jax.random.fold_in(key, i))
  fresh = ["/".join(p) for p in missing]
  if fresh and warn:
    heads = sorted({p[0] if p[0] != "bert" else "pooler" for p in missing})
    msg = (f"{hf_dir}: the checkpoint has no {', '.join(heads)} weights; initialised fresh "
           f"(BERT init, seed {seed}): {', '.join(fresh)}")
    warnings.warn(msg, stacklevel=3)
  return unflatten(out), fresh


def load_hf(hf_dir: str, seed: int = 0):
  """Read an HF BERT directory for pretraining -> (params, model_cfg, fresh).

  params: the BertForPreTraining tree of float32 numpy arrays (a task head in the checkpoint is
  left out); model_cfg: our model ConfigDict; fresh: names (bertjax paths, '/'-joined) of
  parameters the source lacked and that were initialised with BERT's init from `seed` (also
  reported by `warnings.warn`).
  """
  found, model_cfg, _, _, _ = read_hf(hf_dir)
  found = {p: v for p, v in found.items() if p[0] not in ("classifier", "qa_outputs")}
  tree, fresh = _fill_fresh(found, param_shapes(model_cfg), model_cfg, seed, hf_dir, warn=True)
  return tree, model_cfg, fresh


def load_hf_model(hf_dir: str, seed: int = 0):
  """Read an HF BERT directory as the class it is -> (params, model_cfg, head, fresh).

  A BertForMaskedLM stays MLM-only (no NSP head) and a fine-tuned class keeps its task head;
  only the pooler those classes lack is initialised fresh. A BertModel gets fresh MLM and NSP
  heads (a BertForPreTraining tree, ready to pretrain further). No warning: `fresh` names them.
  """
  found, model_cfg, arch, head, _ = read_hf(hf_dir)
  shapes = expected_shapes(model_cfg, PRETRAINING if arch == BASE else arch, head)
  tree, fresh = _fill_fresh(found, shapes, model_cfg, seed, hf_dir, warn=False)
  return tree, model_cfg, head, fresh

