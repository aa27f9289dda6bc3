"""`bertjax import-hf HF_DIR OUT_DIR`: a Hugging Face BERT directory -> a bertjax bundle.

The logic lives in bertjax/weights/: interop/ (HF names <-> params), bundle.py (our format)
and export.py (the way back: `bertjax export BUNDLE OUT --format hf`).
"""
from __future__ import annotations

import argparse
import os

from bertjax.weights import bundle, interop
from bertjax.errors import UserError


def import_hf(hf_dir: str, out_dir: str, seed: int = 0, overwrite: bool = False):
  """HF BERT directory -> bertjax bundle of the same class (a fine-tuned class keeps its head and
  labels). Returns (bundle path, names initialised fresh)."""
  params, model_cfg, head, fresh = interop.load_hf_model(hf_dir, seed=seed)
  files = [bundle._hf_tokenizer(hf_dir)]
  source = f"hf:{os.path.abspath(hf_dir)}"
  meta = {"source": source, "step": None, "do_lower_case": bundle.hf_do_lower_case(hf_dir),
          "fresh": fresh, "head": head,
          "card": {"source": source, "task": head["task"] if head else None, "fresh": fresh}}
  path = bundle.save_bundle(out_dir, params, model_cfg, files, meta, overwrite=overwrite)
  return path, fresh


def export_hf_from_bundle(bundle_dir: str, out_dir: str, overwrite: bool = False) -> str:
  """bertjax bundle -> HF directory of its class (config.json, model.safetensors, tokenizer,
  README.md)."""
  from bertjax.weights import export  # noqa: PLC0415
  return export.export(bundle_dir, out_dir, "hf", overwrite=overwrite)[0]


def import_hf_main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(
      prog="bertjax import-hf",
      description="Convert a Hugging Face BERT directory (config.json + model.safetensors + "
                  "vocab.txt) into a bertjax bundle, for fine-tuning (--init) or for "
                  "evaluating a transformers-fine-tuned model.")
  p.add_argument("hf_dir", help="HF checkpoint directory: BertModel, BertForPreTraining, "
                                "BertForMaskedLM, BertForSequenceClassification, "
                                "BertForTokenClassification or BertForQuestionAnswering")
  p.add_argument("out_dir", help="bundle directory to write")
  p.add_argument("--seed", type=int, default=0, help="seed for heads the source lacks")
  p.add_argument("--overwrite", action="store_true", help="replace an existing OUT_DIR")
  args = p.parse_args(argv)
  if not os.path.isdir(args.hf_dir):
    raise UserError(f"{args.hf_dir}: not a directory")
  path, fresh = import_hf(args.hf_dir, args.out_dir, seed=args.seed, overwrite=args.overwrite)
  if fresh:
    print(f"initialised fresh (not in the checkpoint): {', '.join(fresh)}")
  print(f"wrote bertjax bundle {path}")
  return 0
