"""`bertjax export SRC OUT [--step N] [--format bertjax|hf]`: any model out.

The logic lives in bertjax/weights/export.py.
"""
from __future__ import annotations

import argparse
import logging


def export_main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(
      prog="bertjax export",
      description="Write the params of a bertjax workdir (pretraining or fine-tuning, no "
                  "optimizer state), bundle or Hugging Face directory with the model config, "
                  "the tokenizer and a model card: a bertjax bundle for `bertjax finetune "
                  "--init OUT`, or a Hugging Face directory of the matching transformers class "
                  "(BertForPreTraining / BertForMaskedLM, BertForSequenceClassification, "
                  "BertForTokenClassification, BertForQuestionAnswering).")
  p.add_argument("workdir", help="a pretraining or fine-tuning workdir (or one of its "
                                 "checkpoints/<step> dirs), a bertjax bundle or an HF directory")
  p.add_argument("out", help="output directory (written atomically)")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step to export (default: the latest readable one)")
  p.add_argument("--format", choices=("bertjax", "hf"), default="bertjax",
                 help="bertjax: bundle (params.safetensors, model_config.json, tokenizer/); "
                      "hf: config.json + model.safetensors + tokenizer files + README.md")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only notices
  from bertjax.weights import export  # imports JAX: after --help
  out, arch, src = export.export(args.workdir, args.out, args.format, args.step, args.overwrite)
  step = src.card.get("step")
  at = f"step {step} of " if step is not None else ""
  print(f"exported {at}{args.workdir} as {arch} ({args.format} format) to {out}")
  return 0
