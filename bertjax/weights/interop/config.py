"""HF BertConfig <-> our model config, and the fine-tuning head a config.json describes."""
from __future__ import annotations

import ml_collections

from bertjax.config import model_config
from bertjax.errors import UserError
from bertjax.weights.interop.layout import (_HF_FIELDS, _REQUIRED, CONFIG, PRETRAINING, QA, SEQUENCE,
                                       TOKEN, head_labels)


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

