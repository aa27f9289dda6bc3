"""`bertjax <command> ...`: each command lives in its own module and parses its own flags.

User mistakes raise `UserError`, printed here as one line (exit 2) with no traceback.
"""
from __future__ import annotations

import importlib
import sys

from bertjax.errors import UserError

# command -> ("module", "function"); function(argv: list[str]) -> int. Imported lazily so
# `bertjax --help` does not pay for importing JAX.
COMMANDS = {
    "tokenizer": ("bertjax.data.cli", "tokenizer_main", "train a SentencePiece tokenizer"),
    "prepare": ("bertjax.data.cli", "prepare_main", "tokenise a corpus once into shards"),
    "pretrain": ("bertjax.train.cli", "pretrain_main", "pretrain BERT (MLM + NSP)"),
    "plot": ("bertjax.train.cli", "plot_main", "draw loss/accuracy curves of a workdir"),
    "export": ("bertjax.checkpoint_cli", "export_main", "export weights for fine-tuning"),
    "import-hf": ("bertjax.interop_cli", "import_hf_main", "import a Hugging Face BERT dir"),
    "finetune": ("bertjax.tasks.cli", "finetune_main", "fine-tune on a registered task"),
    "extract-features": ("bertjax.features", "extract_features_main",
                         "write encoder features for text"),
    "compile": ("bertjax.compile_cli", "compile_main", "compile a train step for a TPU/GPU target"),
}


def usage() -> str:
  lines = ["usage: bertjax <command> [flags]   (bertjax <command> --help for its flags)", ""]
  lines += [f"  {name:<18}{help_}" for name, (_, _, help_) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  if not argv or argv[0] in ("-h", "--help"):
    print(usage())
    return 0
  name, rest = argv[0], argv[1:]
  if name not in COMMANDS:
    print(f"bertjax: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
    return 2
  module, func, _ = COMMANDS[name]
  try:
    return int(getattr(importlib.import_module(module), func)(rest) or 0)
  except UserError as e:
    print(f"bertjax {name}: error: {e}", file=sys.stderr)
    return 2
  except FloatingPointError as e:  # training diverged (train.nan_policy=stop): one line too
    print(f"bertjax {name}: error: {e}", file=sys.stderr)
    return 1


if __name__ == "__main__":
  sys.exit(main())
