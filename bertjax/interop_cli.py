"""`bertjax import-hf HF_DIR OUT_DIR`, and the HF half of `bertjax export --format hf`.

The logic lives in bertjax/interop.py (HF names <-> params) and bertjax/bundle.py (our format).
"""
from __future__ import annotations

import argparse
import os
import warnings

from bertjax import bundle, interop
from bertjax.errors import UserError


def import_hf(hf_dir: str, out_dir: str, seed: int = 0, overwrite: bool = False):
  """HF BERT directory -> bertjax bundle. Returns (bundle path, names initialised fresh)."""
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the CLI prints the fresh heads itself
    params, model_cfg, fresh = interop.load_hf(hf_dir, seed=seed)
  files = [bundle._hf_tokenizer(hf_dir)]
  meta = {"source": f"hf:{os.path.abspath(hf_dir)}", "step": None,
          "do_lower_case": bundle.hf_do_lower_case(hf_dir), "fresh": fresh}
  path = bundle.save_bundle(out_dir, params, model_cfg, files, meta, overwrite=overwrite)
  return path, fresh


def export_hf_from_bundle(bundle_dir: str, out_dir: str, overwrite: bool = False) -> str:
  """bertjax bundle -> HF BertForPreTraining directory (config.json, model.safetensors, tokenizer)."""
  params, model_cfg, tokenizer_path, meta = bundle.load_bundle(bundle_dir)
  files = [tokenizer_path] if tokenizer_path else []
  return interop.save_hf(params, model_cfg, out_dir, files,
                         do_lower_case=bool(meta.get("do_lower_case", True)),
                         overwrite=overwrite)


def import_hf_main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(
      prog="bertjax import-hf",
      description="Convert a Hugging Face BERT directory (config.json + model.safetensors + "
                  "vocab.txt) into a bertjax bundle for fine-tuning.")
  p.add_argument("hf_dir", help="HF checkpoint directory (BertModel or BertForPreTraining)")
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
