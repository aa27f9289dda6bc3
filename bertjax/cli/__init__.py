"""`bertjax <command> ...` (also `python -m bertjax`): every command's flags live in this package.

One module per command group, each a thin `<name>_main(argv) -> exit code`: parse the flags,
build the config (`--config FILE[:ARG]` and `--config.KEY=VALUE` overrides, one parser:
common.split_overrides), start the runtime (common.start_runtime), call the library.
A new command is a module here and one line in COMMANDS.
User mistakes raise `UserError`, printed here as one line (exit 2) with no traceback.
"""
from __future__ import annotations

import importlib
import sys

from bertjax.errors import UserError

# command -> ("module", "function", help); function(argv: list[str]) -> int. Imported lazily so
# `bertjax --help` does not pay for importing JAX.
COMMANDS = {
    "tokenizer": ("bertjax.cli.data", "tokenizer_main", "train a SentencePiece tokenizer"),
    "prepare": ("bertjax.cli.data", "prepare_main", "tokenise a corpus once into shards"),
    "pretrain": ("bertjax.cli.train", "pretrain_main", "pretrain BERT (MLM + NSP)"),
    "plot": ("bertjax.cli.train", "plot_main", "draw loss/accuracy curves of a workdir"),
    "export": ("bertjax.cli.export", "export_main", "export weights for fine-tuning"),
    "import-hf": ("bertjax.cli.import_hf", "import_hf_main", "import a Hugging Face BERT dir"),
    "finetune": ("bertjax.cli.finetune", "finetune_main", "fine-tune on a registered task"),
    "extract-features": ("bertjax.cli.features", "extract_features_main",
                         "write encoder features for text"),
    "compile": ("bertjax.cli.compile", "compile_main", "compile a train step for a TPU/GPU target"),
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
