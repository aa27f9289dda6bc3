"""`bertjax extract-features`: flags -> bertjax.features.Extractor (the format: its docstring)."""
from __future__ import annotations

import json
import os

from bertjax import features
from bertjax.cli.common import parser
from bertjax.errors import UserError

HELP = features.__doc__.split("`load_features")[0]


def extract_features_main(argv: list[str]) -> int:
  p = parser("bertjax extract-features", HELP)
  p.add_argument("--init", required=True, help="bertjax bundle or Hugging Face BERT directory")
  p.add_argument("--input", required=True, help="UTF-8 text: a sentence or `A ||| B` per line")
  p.add_argument("--out", required=True, help="output directory (new or empty)")
  p.add_argument("--layers", default="-1",
                 help="comma-separated hidden-state indices (0 = embeddings, -1 = last layer) "
                      "or 'none' (default: -1)")
  p.add_argument("--pool", default="cls", choices=features.POOLS, help="pooled vector (default: cls)")
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--max-seq-length", type=int, default=128)
  p.add_argument("--shard-size", type=int, default=1000, help="examples per .npz shard")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  # "-1,-2" looks like a flag to argparse: glue the value to its option.
  argv = list(argv)
  for i, a in enumerate(argv[:-1]):
    if a == "--layers":
      argv[i:i + 2] = [f"--layers={argv[i + 1]}"]
      break
  args = p.parse_args(argv)
  if args.shard_size < 1:
    raise UserError(f"--shard-size {args.shard_size}: must be >= 1")
  features.count_examples(args.input)  # bad input fails before the checkpoint is loaded
  ex = features.Extractor(args.init, args.layers, args.pool, args.max_seq_length, args.batch_size)
  meta = ex.run(args.input, args.out, args.shard_size, progress=not args.no_progress)
  print(json.dumps({"out": os.path.abspath(args.out), "num_examples": meta["num_examples"],
                    "layers": meta["layers"], "pool": meta["pool"],
                    "shards": len(meta["shards"])}))
  return 0
