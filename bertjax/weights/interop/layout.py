"""What a bertjax param tree is in Hugging Face's terms: the transformers classes, the tensor name
of every bertjax path, the shapes a class holds, and BERT's init for a parameter a source lacks.
(The classes and their trees: bertjax/weights/interop/__init__.py.)"""
from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

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


def flatten(tree, prefix=()) -> dict[tuple[str, ...], object]:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: dict) -> dict:
  tree: dict = {}
  for path, v in flat.items():
    node = tree
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return tree


def param_shapes(model_cfg) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Flat {path: shape} of BertForPreTraining params for this config (no arrays allocated)."""
  # Shapes do not depend on how the model computes: trace the plain f32 / einsum variant (a
  # config saved for cudnn attention must still convert on a CPU-only machine).
  plain = dict(model_cfg.to_dict(), dtype="float32", attention_impl="einsum", remat=False,
               fused_qkv=False)
  # Loading one checkpoint asks several times (~0.45 s a trace): trace each config once.
  return dict(_param_shapes(json.dumps(plain, sort_keys=True)))


@functools.lru_cache(maxsize=8)
def _param_shapes(plain_json: str) -> tuple:
  from bertjax.model import BertForPreTraining  # noqa: PLC0415 (keeps import light)
  model_cfg = ml_collections.ConfigDict(json.loads(plain_json))
  ids = jnp.zeros((1, 2), jnp.int32)
  tree = jax.eval_shape(lambda: BertForPreTraining(model_cfg).init(
      jax.random.PRNGKey(0), ids, ids, ids, None))["params"]
  return tuple((p, tuple(s.shape)) for p, s in flatten(dict(tree)).items())


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


def head_labels(head: dict) -> list[str]:
  """The label names of a classification / tagging head in id order (regression: one score)."""
  if head["family"] == "regression":
    return ["LABEL_0"]  # what transformers names a num_labels=1 output
  return [str(l) for l in head["labels"]]


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
  flat = flatten(dict(params))
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

