"""Hugging Face BERT checkpoints <-> bertjax parameters, through safetensors only (no pickle).

  layout.py   the classes, tensor names and shapes;  config.py  config.json <-> model config
  read.py     `read_hf`, `load_hf`, `load_hf_model`;  write.py   `save_hf`

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

from bertjax.weights.interop.config import head_from_hf, hf_config_from_model, model_config_from_hf
from bertjax.weights.interop.layout import (BASE, CONFIG, HEAD_CLASSES, MASKED_LM, NO_POOLER,
                                       PIPELINE_TAGS, PRETRAINING, QA, SAFE_INDEX, SAFE_WEIGHTS,
                                       SEQUENCE, TOKEN, architecture, check_params,
                                       expected_shapes, flatten, fresh_param, head_labels, hf_name,
                                       num_head_outputs, param_shapes, unflatten)
from bertjax.weights.interop.read import load_hf, load_hf_model, read_hf
from bertjax.weights.interop.write import hf_tensors, save_hf, tokenizer_note
