"""Hugging Face BERT checkpoints <-> bertjax parameters, through safetensors only (no pickle).

Which transformers class a bertjax param tree is (`architecture`), by what it holds:
  BertForPreTraining              {'bert', 'mlm_transform', 'mlm_norm', 'mlm_output_bias', 'nsp'}
  BertForMaskedLM                 the same without 'nsp' (MLM-only pretraining); no pooler
  BertModel                       {'bert'} alone; names without the `bert.` prefix
  BertForSequenceClassification   {'bert', 'classifier'}, head family classification/regression
  BertForTokenClassification      {'bert', 'classifier'}, head family tagging; no pooler
  BertForQuestionAnswering        {'bert', 'qa_outputs'}, head family span; no pooler
(bertjax/heads.py: classifier/dense and qa_outputs/dense are HF's `classifier` / `qa_outputs`
Linear layers.) A fine-tuned tree comes with a `head` dict: {"family", "task", "labels",
"pooling"}; its labels become config.json's id2label / label2id. The classes marked "no pooler"
are built by transformers without one (add_pooling_layer=False), so the pooler is not written;
bertjax always has one, so reading them initialises it fresh.

Reading (`read_hf`) accepts what BERT checkpoints on the Hub actually contain:
  - those six classes' names; BertModel names with or without the `bert.` prefix;
  - the tied `cls.predictions.decoder.{weight,bias}` (checked equal to what they are tied to);
  - old LayerNorm names `gamma` / `beta`; the `embeddings.position_ids` buffer (ignored);
  - one `model.safetensors` or a sharded `model.safetensors.index.json`.
`load_hf` is the pretraining view of a checkpoint: the BertForPreTraining tree, heads the source
lacks (MLM, NSP, pooler) initialised fresh with BERT's init and named in a warning, a task head
(classifier, qa_outputs) left out. Torch Linear weights are [out, in]; our Dense kernels are
[in, out], so they are transposed.

Writing (`save_hf`) produces a directory `transformers` loads as the tree's class: config.json,
model.safetensors (metadata format=pt, as torch's save_pretrained writes), the tokenizer files
and a README.md model card. The decoder weight/bias are tied to the word embeddings /
`cls.predictions.bias`, so, like `save_pretrained`, they are not written (transformers re-ties
them on load and lists them as tied, not missing).

Arrays are float32 numpy.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import warnings
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from bertjax.config import model_config
from bertjax.errors import UserError

SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
CONFIG = "config.json"
# BertConfig fields that map one-to-one onto our model config.
_HF_FIELDS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "hidden_act", "hidden_dropout_prob",
              "attention_probs_dropout_prob", "max_position_embeddings", "type_vocab_size",
              "initializer_range", "layer_norm_eps")
_REQUIRED = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
             "intermediate_size")
# Tensors in HF files that are buffers or duplicates of tied weights, not parameters.
_IGNORED = ("embeddings.position_ids",)
# Top-level bertjax params that are heads: initialised fresh when the source lacks them.
_HEADS = ("mlm_transform", "mlm_norm", "mlm_output_bias", "nsp")
_MLM = ("mlm_transform", "mlm_norm", "mlm_output_bias")

# The transformers classes, and the top-level bertjax params each one holds.
PRETRAINING = "BertForPreTraining"
MASKED_LM = "BertForMaskedLM"
BASE = "BertModel"
SEQUENCE = "BertForSequenceClassification"
TOKEN = "BertForTokenClassification"
QA = "BertForQuestionAnswering"
HEAD_CLASSES = {"classification": SEQUENCE, "regression": SEQUENCE, "tagging": TOKEN,
                "span": QA}
_TOP_KEYS = {PRETRAINING: {"bert", *_HEADS}, MASKED_LM: {"bert", *_MLM}, BASE: {"bert"},
             SEQUENCE: {"bert", "classifier"}, TOKEN: {"bert", "classifier"},
             QA: {"bert", "qa_outputs"}}
# transformers builds these without a pooler (add_pooling_layer=False).
NO_POOLER = (MASKED_LM, TOKEN, QA)
# transformers' pipeline() task for each class (the model card's pipeline_tag).
PIPELINE_TAGS = {PRETRAINING: "fill-mask", MASKED_LM: "fill-mask", BASE: "feature-extraction",
                 SEQUENCE: "text-classification", TOKEN: "token-classification",
                 QA: "question-answering"}


# ---------------------------------------------------------------------------------------------
# Config conversion
# ---------------------------------------------------------------------------------------------
def model_config_from_hf(hf: dict, where: str = CONFIG) -> ml_collections.ConfigDict:
  """HF BertConfig (as a dict) -> our model ConfigDict. Rejects what bertjax cannot represent."""
  if hf.get("model_type", "bert") != "bert":
    raise UserError(f"{where}: model_type={hf['model_type']!r}; only BERT checkpoints "
                    f"(model_type \"bert\") can be imported")
  for key in _REQUIRED:
    if key not in hf:
      raise UserError(f"{where}: missing field {key!r}; is this a BERT config.json?")
  act = hf.get("hidden_act", "gelu")
  if act != "gelu":
    raise UserError(f"{where}: hidden_act={act!r}; bertjax implements BERT's exact (erf) GELU "
                    f"only (\"gelu\"); convert a checkpoint trained with that activation")
  pos = hf.get("position_embedding_type", "absolute")
  if pos != "absolute":
    raise UserError(f"{where}: position_embedding_type={pos!r}; bertjax implements learned "
                    f"absolute positions only")
  if hf.get("is_decoder") or hf.get("add_cross_attention"):
    raise UserError(f"{where}: a decoder / cross-attention BERT cannot be imported; "
                    f"bertjax is an encoder")
  c = model_config("mini")
  for key in _HF_FIELDS:
    if key in hf:
      value = hf[key]
      current = c[key]
      if isinstance(current, float):
        value = float(value)
      elif isinstance(current, int):
        if not isinstance(value, int) or isinstance(value, bool):
          raise UserError(f"{where}: {key}={value!r}; expected an integer")
      c[key] = value
  if c.hidden_size % c.num_attention_heads:
    raise UserError(f"{where}: hidden_size={c.hidden_size} is not divisible by "
                    f"num_attention_heads={c.num_attention_heads}")
  return c


def head_labels(head: dict) -> list[str]:
  """The label names of a classification / tagging head in id order (regression: one score)."""
  if head["family"] == "regression":
    return ["LABEL_0"]  # what transformers names a num_labels=1 output
  return [str(l) for l in head["labels"]]


def head_from_hf(hf: dict, arch: str, num_labels: int, where: str = CONFIG) -> dict | None:
  """The fine-tuning head a transformers config describes (None for the pretraining classes)."""
  if arch not in (SEQUENCE, TOKEN, QA):
    return None
  if arch == QA:
    family = "span"
  elif arch == TOKEN:
    family = "tagging"
  else:
    regression = hf.get("problem_type") == "regression" or num_labels == 1
    family = "regression" if regression else "classification"
  labels = None
  if family in ("classification", "tagging"):
    id2label = {int(k): str(v) for k, v in (hf.get("id2label") or {}).items()}
    if not id2label:
      id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
    if sorted(id2label) != list(range(num_labels)):
      raise UserError(f"{where}: id2label has ids {sorted(id2label)}, the classifier has "
                      f"{num_labels} outputs; the config and the weights disagree")
    labels = [id2label[i] for i in range(num_labels)]
  return {"family": family, "task": hf.get("finetuning_task"), "labels": labels,
          "pooling": "pooler"}


def hf_config_from_model(model_cfg, pad_token_id: int = 0, arch: str = PRETRAINING,
                         head: dict | None = None) -> dict:
  """Our model ConfigDict (+ the head, for the fine-tuned classes) -> a complete BertConfig
  dict for `arch`: num_labels, id2label / label2id, problem_type, finetuning_task."""
  if model_cfg.hidden_act != "gelu":
    raise UserError(f"model.hidden_act={model_cfg.hidden_act!r}: only \"gelu\" exports to HF")
  hf = {"architectures": [arch], "model_type": "bert"}
  for key in _HF_FIELDS:
    hf[key] = model_cfg[key]
  hf.update({
      "pad_token_id": int(pad_token_id),
      "position_embedding_type": "absolute",
      "use_cache": True,
      "classifier_dropout": None,
      "tie_word_embeddings": True,
      "torch_dtype": "float32",
  })
  if head is not None:
    if head.get("task"):
      hf["finetuning_task"] = head["task"]
    if arch in (SEQUENCE, TOKEN):
      labels = head_labels(head)
      if len(set(labels)) != len(labels):
        raise UserError(f"the head's labels {labels} repeat a name; label2id needs them unique")
      hf["num_labels"] = len(labels)
      hf["id2label"] = {str(i): l for i, l in enumerate(labels)}
      hf["label2id"] = {l: i for i, l in enumerate(labels)}
    if arch == SEQUENCE:  # what transformers' loss and text-classification pipeline read
      hf["problem_type"] = ("regression" if head["family"] == "regression"
                            else "single_label_classification")
  return hf


# ---------------------------------------------------------------------------------------------
# Name mapping: bertjax path <-> HF name
# ---------------------------------------------------------------------------------------------
# bertjax module (inside a layer) -> HF module (inside encoder.layer.{i}).
_LAYER_MODULES = {
    ("attention", "query"): "attention.self.query",
    ("attention", "key"): "attention.self.key",
    ("attention", "value"): "attention.self.value",
    ("attention_output",): "attention.output.dense",
    ("attention_norm",): "attention.output.LayerNorm",
    ("intermediate",): "intermediate.dense",
    ("output",): "output.dense",
    ("output_norm",): "output.LayerNorm",
}
_TOP_MODULES = {
    ("bert", "embeddings", "LayerNorm"): "bert.embeddings.LayerNorm",
    ("bert", "pooler"): "bert.pooler.dense",
    ("mlm_transform",): "cls.predictions.transform.dense",
    ("mlm_norm",): "cls.predictions.transform.LayerNorm",
    ("nsp",): "cls.seq_relationship",
    ("classifier", "dense"): "classifier",
    ("qa_outputs", "dense"): "qa_outputs",
}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def hf_name(path: tuple[str, ...]) -> tuple[str, bool]:
  """bertjax param path -> (HF BertForPreTraining tensor name, transpose?)."""
  if path[:2] == ("bert", "embeddings") and len(path) == 3:
    return f"bert.embeddings.{path[2]}.weight", False  # word/position/token_type tables [*, H]
  if path == ("mlm_output_bias",):
    return "cls.predictions.bias", False
  *module, leaf = path
  module = tuple(module)
  if len(module) >= 2 and module[0] == "bert" and module[1].startswith("layer_"):
    i = int(module[1].removeprefix("layer_"))
    base = f"bert.encoder.layer.{i}.{_LAYER_MODULES[module[2:]]}"
  else:
    base = _TOP_MODULES[module]
  return f"{base}.{_LEAVES[leaf]}", leaf == "kernel"


def _normalise(name: str) -> str:
  """A tensor name as found in an HF file -> the BertForPreTraining spelling we map from."""
  if name.endswith(".gamma"):
    name = name[:-len("gamma")] + "weight"
  elif name.endswith(".beta"):
    name = name[:-len("beta")] + "bias"
  if re.match(r"(embeddings|encoder|pooler)\.", name):
    name = "bert." + name  # BertModel checkpoints have no prefix
  return name


def _flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def _unflatten(flat: dict) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def param_shapes(model_cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of BertForPreTraining params for this config (no arrays allocated)."""
  from bertjax.model import BertForPreTraining  # noqa: PLC0415 (keeps import light)
  # Shapes do not depend on how the model computes: trace the plain f32 / einsum variant (a
  # config saved for cudnn attention must still convert on a CPU-only machine).
  model_cfg = ml_collections.ConfigDict(model_cfg.to_dict())
  model_cfg.update(dtype="float32", attention_impl="einsum", remat=False, fused_qkv=False)
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = jax.eval_shape(lambda: BertForPreTraining(model_cfg).init(
      jax.random.PRNGKey(0), ids, ids, ids, None))["params"]
  return {p: tuple(s.shape) for p, s in _flatten(dict(tree)).items()}


def architecture(params, head: dict | None = None) -> str:
  """The transformers class a bertjax param tree is (see the module docstring)."""
  keys = set(params)
  if head is not None:
    if head.get("family") not in HEAD_CLASSES:
      raise UserError(f"head family {head.get('family')!r}: use one of {', '.join(HEAD_CLASSES)}")
    return HEAD_CLASSES[head["family"]]
  if keys & {"classifier", "qa_outputs"}:
    raise UserError("params hold a task head (classifier / qa_outputs) but no description of "
                    "it (task, labels); export the fine-tuning workdir itself, or a bundle "
                    "written from one")
  if "nsp" in keys:
    return PRETRAINING
  if keys & set(_MLM):
    return MASKED_LM
  return BASE


def num_head_outputs(head: dict) -> int:
  return 2 if head["family"] == "span" else len(head_labels(head))


def expected_shapes(model_cfg, arch: str, head: dict | None = None
                    ) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of the bertjax tree of `arch` (with the pooler bertjax always has)."""
  keep = _TOP_KEYS[arch]
  out = {p: s for p, s in param_shapes(model_cfg).items() if p[0] in keep}
  if arch in (SEQUENCE, TOKEN, QA):
    name = "qa_outputs" if arch == QA else "classifier"
    n = num_head_outputs(head)
    out[(name, "dense", "kernel")] = (model_cfg.hidden_size, n)                    # [H, C]
    out[(name, "dense", "bias")] = (n,)
  return out


def check_params(params, model_cfg, arch: str, head: dict | None, where: str = "params",
                 pooler_optional: bool = False) -> None:
  """Every path of `arch`'s tree present with its shape, nothing else; else one UserError."""
  flat = _flatten(dict(params))
  shapes = expected_shapes(model_cfg, arch, head)
  for path, shape in shapes.items():
    if path not in flat:
      if pooler_optional and path[:2] == ("bert", "pooler"):
        continue
      raise UserError(f"{where} lack {'/'.join(path)}, which a {arch} holds")
    if tuple(np.shape(flat[path])) != shape:
      why = (f"the head has {num_head_outputs(head)} labels" if path[0] in
             ("classifier", "qa_outputs") else "the model config implies it")
      raise UserError(f"{where}: {'/'.join(path)} has shape {tuple(np.shape(flat[path]))}, "
                      f"expected {shape}: {why}")
  extra = sorted("/".join(p) for p in flat if p not in shapes)
  if extra:
    raise UserError(f"{where} have entries a {arch} cannot hold: {', '.join(extra[:4])}")


def fresh_param(path: tuple[str, ...], shape: tuple[int, ...], model_cfg, key) -> np.ndarray:
  """BERT init for one parameter: truncated normal kernels/embeddings, zero biases, unit scales."""
  from bertjax.model import weight_init  # noqa: PLC0415
  leaf = path[-1]
  if leaf == "scale":
    return np.ones(shape, np.float32)
  if leaf == "bias" or path == ("mlm_output_bias",):
    return np.zeros(shape, np.float32)
  return np.asarray(weight_init(model_cfg)(key, shape, jnp.float32))


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
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
                      f"bertjax reads the BERT classes of bertjax/interop.py only")
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
  return _unflatten(out), fresh


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


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------
def hf_tensors(params, arch: str = PRETRAINING) -> dict[str, np.ndarray]:
  """bertjax params -> {HF name in `arch`: contiguous float32 array} (decoder tied; no pooler
  for the classes transformers builds without one)."""
  out = {}
  for path, value in _flatten(dict(params)).items():
    if arch in NO_POOLER and path[:2] == ("bert", "pooler"):
      continue
    name, transpose = hf_name(path)
    if arch == BASE:
      name = name.removeprefix("bert.")
    value = np.asarray(value, np.float32)
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out


def _pad_id(tokenizer_files: Iterable[str]) -> int:
  """[PAD]'s id in a vocab.txt or SentencePiece model, else 0 (BERT's convention)."""
  for path in tokenizer_files:
    base = os.path.basename(path)
    if base == "vocab.txt":
      with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
          if line.rstrip("\n") == "[PAD]":
            return i
    elif base.endswith(".model"):
      import sentencepiece as spm  # noqa: PLC0415
      sp = spm.SentencePieceProcessor(model_file=path)
      if sp.pad_id() >= 0:
        return sp.pad_id()
      pid = sp.piece_to_id("[PAD]")
      if pid != sp.unk_id():
        return pid
  return 0


def tokenizer_kind(tokenizer_files: Iterable[str]) -> str:
  """'wordpiece' (vocab.txt), 'sentencepiece' (*.model) or 'none'."""
  names = [os.path.basename(p) for p in tokenizer_files]
  if any(n.endswith(".model") for n in names):
    return "sentencepiece"
  if "vocab.txt" in names:
    return "wordpiece"
  return "none"


class atomic_dir:
  """`with atomic_dir(out) as tmp:` write into tmp; on success tmp is renamed to `out`.

  A failure leaves no half-written `out`. An existing non-empty `out` is an error unless
  overwrite=True, in which case it is replaced only after the new one is complete.
  """

  def __init__(self, out_dir: str, overwrite: bool = False):
    self.out = os.path.abspath(out_dir)
    self.overwrite = overwrite

  def __enter__(self) -> str:
    if os.path.exists(self.out) and not os.path.isdir(self.out):
      raise UserError(f"{self.out}: exists and is not a directory; choose another output path")
    if os.path.isdir(self.out) and os.listdir(self.out) and not self.overwrite:
      raise UserError(f"{self.out}: exists and is not empty; delete it or pass --overwrite")
    parent = os.path.dirname(self.out)
    os.makedirs(parent, exist_ok=True)
    self.tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(self.out)}.tmp-", dir=parent)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    if exc_type is not None:
      shutil.rmtree(self.tmp, ignore_errors=True)
      return False
    # mkdtemp makes 0700 dirs (and safetensors 0600 files): give them the usual umask modes.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(self.tmp, 0o777 & ~umask)
    for root, dirs, files in os.walk(self.tmp):
      for d in dirs:
        os.chmod(os.path.join(root, d), 0o777 & ~umask)
      for f in files:
        os.chmod(os.path.join(root, f), 0o666 & ~umask)
    old = None
    if os.path.isdir(self.out):
      old = self.tmp + ".old"
      os.rename(self.out, old)
    os.rename(self.tmp, self.out)
    if old:
      shutil.rmtree(old, ignore_errors=True)
    return False


def _tokenizer_config(do_lower_case: bool, max_len: int) -> dict:
  return {"tokenizer_class": "BertTokenizer", "do_lower_case": do_lower_case,
          "model_max_length": max_len, "unk_token": "[UNK]", "sep_token": "[SEP]",
          "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}


def tokenizer_note(tokenizer_files: Iterable[str]) -> str:
  """The model card's paragraph on how to tokenise for this export."""
  names = [os.path.basename(p) for p in tokenizer_files]
  kind = tokenizer_kind(tokenizer_files)
  if kind == "sentencepiece":
    spm_name = next(n for n in names if n.endswith(".model"))
    return (f"The tokenizer is the SentencePiece model `{spm_name}` (bertjax maps "
            f"[CLS]/[SEP]/[MASK]/[PAD] to its pieces). transformers has no BERT SentencePiece "
            f"tokenizer class, so load the weights with `from_pretrained(dir)` and tokenise "
            f"with sentencepiece; `pipeline()` cannot build this tokenizer.\n")
  if kind == "wordpiece":
    return ("The tokenizer is BERT's WordPiece (`vocab.txt`, `tokenizer_config.json`): "
            "`AutoTokenizer.from_pretrained(dir)` loads it as BertTokenizerFast, the ids bertjax "
            "trained with.\n")
  return "No tokenizer files were exported with these weights.\n"


def save_hf(params, model_cfg, out_dir: str, tokenizer_files: Iterable[str] = (),
            do_lower_case: bool = True, overwrite: bool = False, head: dict | None = None,
            readme: str | None = None) -> str:
  """Write an HF directory of the tree's class: config.json, model.safetensors, tokenizer
  files and README.md.

  head: the fine-tuning head ({"family", "task", "labels", "pooling"}) of a fine-tuned tree;
  None for a pretraining tree (BertForPreTraining, or BertForMaskedLM without an NSP head).
  tokenizer_files: vocab.txt (WordPiece; a tokenizer_config.json is written unless one is
  given) or a SentencePiece .model (copied; transformers has no BERT SentencePiece tokenizer,
  so only the weights and config load there; README.md says so).
  readme: the model card (bertjax/weights/export.py writes one); a note on the tokenizer is appended.
  """
  tokenizer_files = [str(p) for p in tokenizer_files]
  for path in tokenizer_files:
    if not os.path.isfile(path):
      raise UserError(f"{path}: tokenizer file not found")
  arch = architecture(params, head)
  if head is not None and head.get("pooling", "pooler") != "pooler":
    raise UserError(f"the model was fine-tuned with finetune.pooling={head['pooling']!r}; "
                    f"transformers' {SEQUENCE} reads BERT's pooler output, so it would predict "
                    f"differently: fine-tune with pooling=pooler to export it")
  check_params(params, model_cfg, arch, head, "params", pooler_optional=arch in NO_POOLER)
  hf_cfg = hf_config_from_model(model_cfg, _pad_id(tokenizer_files), arch, head)
  tensors = hf_tensors(params, arch)
  if readme is None:
    readme = f"# bertjax export\n\nA `{arch}` written by bertjax.\n"
  readme = readme.rstrip("\n") + "\n\n## Tokenizer\n\n" + tokenizer_note(tokenizer_files)
  with atomic_dir(out_dir, overwrite) as tmp:
    with open(os.path.join(tmp, CONFIG), "w") as f:
      json.dump(hf_cfg, f, indent=2, sort_keys=True)
    # format=pt: what torch's save_pretrained writes; transformers' Flax loader maps it too.
    save_file(tensors, os.path.join(tmp, SAFE_WEIGHTS), metadata={"format": "pt"})
    for path in tokenizer_files:
      shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
    names = {os.path.basename(p) for p in tokenizer_files}
    if tokenizer_kind(tokenizer_files) == "wordpiece" and "tokenizer_config.json" not in names:
      with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
        json.dump(_tokenizer_config(do_lower_case, model_cfg.max_position_embeddings), f,
                  indent=2)
    with open(os.path.join(tmp, "README.md"), "w") as f:
      f.write(readme)
  return os.path.abspath(out_dir)
