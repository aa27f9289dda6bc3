"""Writing a bertjax tree as a directory transformers loads as its class: config.json,
model.safetensors, the tokenizer files and a README.md model card."""
from __future__ import annotations

import json
import os
import shutil
from typing import Iterable

import numpy as np
from safetensors.numpy import save_file

from bertjax.data.tokenizer import tokenizer_kind
from bertjax.errors import UserError
from bertjax.weights.atomic import atomic_dir
from bertjax.weights.interop.config import hf_config_from_model
from bertjax.weights.interop.layout import (BASE, CONFIG, NO_POOLER, PRETRAINING, SAFE_WEIGHTS,
                                       SEQUENCE, architecture, check_params, flatten, hf_name)


def hf_tensors(params, arch: str = PRETRAINING) -> dict[str, np.ndarray]:
  """bertjax params -> {HF name in `arch`: contiguous float32 array} (decoder tied; no pooler
  for the classes transformers builds without one)."""
  out = {}
  for path, value in flatten(dict(params)).items():
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
  readme: the model card (bertjax/weights/export.py writes one); a note on the tokenizer is
  appended.
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
