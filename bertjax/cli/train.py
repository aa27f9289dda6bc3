"""`bertjax pretrain` and `bertjax plot`: flags -> config -> library call (bertjax.train)."""
from __future__ import annotations

import os

from bertjax.cli.common import parser, split_overrides, start_runtime
from bertjax.errors import UserError

PRETRAIN_HELP = """\
Pretrain BERT (MLM + NSP) with the one trainer. Everything else comes from the config file;
override any field on the command line:

  bertjax pretrain --config configs/pretrain_demo.py --workdir runs/demo \\
      --config.train.num_steps=2000 --config.optim.learning_rate=5e-4 --config.model.dtype=bfloat16

A misspelled key is an error. Running again on the same --workdir resumes from its latest
checkpoint (params, optimizer, step, RNG and data position); SIGTERM/Ctrl-C saves and exits 0.
Multi-host: run the same command on every host with --coordinator HOST:PORT --num-processes N
--process-id I (or let JAX detect a TPU pod / SLURM job).
"""


def pretrain_main(argv: list[str]) -> int:
  p = parser("bertjax pretrain", PRETRAIN_HELP)
  p.add_argument("--config", required=True, help="a Python config file (configs/*.py)")
  p.add_argument("--workdir", required=True,
                 help="checkpoints, metrics.jsonl, TensorBoard (tb/), curves.png, export/")
  p.add_argument("--init-from", default="",
                 help="warm start params only from a workdir, checkpoint, bertjax bundle or "
                      "Hugging Face dir (ignored when the workdir already has a checkpoint)")
  p.add_argument("--no-export", action="store_true", help="skip WORKDIR/export at the end")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  p.add_argument("--synthetic", action="store_true",
                 help="random batches of the configured shapes (benchmarks, smoke tests)")
  from bertjax import distributed
  distributed.add_flags(p)
  args, rest = p.parse_known_args(argv)
  overrides = split_overrides(rest, "pretrain")

  from bertjax.config import load_config
  cfg = load_config(args.config, overrides)   # config errors end here, before JAX starts
  start_runtime(args)

  from bertjax import sharding
  from bertjax.config import validate
  from bertjax.train.pretrain import run_pretraining
  validate(cfg, sharding.mesh_size(sharding.make_mesh(cfg.mesh)))
  summary = run_pretraining(cfg, args.workdir, init_from=args.init_from,
                            synthetic=args.synthetic, export=not args.no_export,
                            progress=not args.no_progress)
  return 0 if summary else 1


def plot_main(argv: list[str]) -> int:
  p = parser("bertjax plot", "Draw loss / accuracy / lr / throughput curves of a workdir "
                              "(from its metrics.jsonl) to a PNG.")
  p.add_argument("workdir")
  p.add_argument("--out", default=None, help="PNG path (default WORKDIR/curves.png)")
  args = p.parse_args(argv)
  if not os.path.isdir(args.workdir):
    raise UserError(f"{args.workdir}: no such directory")
  from bertjax.train.metrics import plot
  print(plot(args.workdir, args.out))
  return 0
