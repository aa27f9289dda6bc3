"""`bertjax export WORKDIR OUT [--step N] [--format bertjax|hf]`: params for fine-tuning."""
from __future__ import annotations

import argparse
import logging


def export_main(argv: list[str]) -> int:
  p = argparse.ArgumentParser(
      prog="bertjax export",
      description="Write the params of a pretraining checkpoint (no optimizer state) with the "
                  "model config and the tokenizer: a bertjax bundle for `bertjax finetune "
                  "--init-from OUT`, or a Hugging Face BertForPreTraining directory.")
  p.add_argument("workdir", help="a pretraining workdir (or one of its checkpoints/<step> dirs)")
  p.add_argument("out", help="output directory (written atomically)")
  p.add_argument("--step", type=int, default=None,
                 help="checkpoint step to export (default: the latest readable one)")
  p.add_argument("--format", choices=("bertjax", "hf"), default="bertjax",
                 help="bertjax: bundle (params.safetensors, model_config.json, tokenizer/); "
                      "hf: config.json + model.safetensors + tokenizer files")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
  args = p.parse_args(argv)
  logging.getLogger("absl").setLevel(logging.ERROR)  # Orbax's read-only notices
  from bertjax import checkpoint  # imports JAX: after --help
  out, step = checkpoint.export_checkpoint(args.workdir, args.out, args.step, args.format,
                                           args.overwrite)
  print(f"exported step {step} of {args.workdir} ({args.format} format) to {out}")
  return 0
