"""`bertjax compile`: compile the real train step for a TPU slice or GPU host, without one."""
from __future__ import annotations

import json
import logging
import os

from bertjax.cli.common import parser, split_overrides
from bertjax.errors import UserError

HELP = """\
Lower and compile the pretraining (every phase) or fine-tuning train step ahead of time for a
named target, with the config's shapes, shardings, donation and batch; print per-device memory
against the chip's HBM, the compiler's FLOPs against the model-FLOPs formula, and the step time
at the chip's peak and at an assumed MFU. No accelerator and no data are needed:

  bertjax compile --config configs/accel_tpu_v5e_base.py --target v5e-32
  bertjax compile --config configs/accel_tpu_v5e_base.py --target v5e-8 --step finetune \\
      --config.train.global_batch_size=64
  bertjax compile --config configs/bert.py:large --target v5e-256 \\
      --config.train.global_batch_size=4096 --config.mesh.fsdp=16

Exit 2 with one line naming the config field to change when a step does not fit in HBM or a
batch / mesh.fsdp does not divide the target's devices. TPU targets need libtpu
(pip install 'libtpu==0.0.42.*', in the test extra). Targets: docs/targets.md.
"""


def compile_main(argv: list[str]) -> int:
  from bertjax import targets
  p = parser("bertjax compile", HELP)
  p.add_argument("--config", required=True, help="a Python config file (configs/*.py)")
  p.add_argument("--target", required=True, choices=sorted(targets.TARGETS),
                 help="TPU slice or GPU host to compile for")
  p.add_argument("--step", default="pretrain", choices=("pretrain", "finetune"),
                 help="pretrain: every phase of the config; finetune: finetune.task "
                      "(sst2 when unset) at finetune.max_seq_length")
  p.add_argument("--mfu", type=float, default=None,
                 help="assumed model-FLOPs utilisation for the expected step time (default 0.40)")
  p.add_argument("--json", default="", help="also write the reports to this JSON file")
  args, rest = p.parse_known_args(argv)
  overrides = split_overrides(rest, "compile")
  if args.mfu is not None and not 0.0 < args.mfu <= 1.0:
    raise UserError(f"--mfu={args.mfu}: use a fraction in (0, 1], e.g. 0.4")
  target = targets.get(args.target)
  from bertjax.config import load_config
  cfg = load_config(args.config, overrides)
  # The host backend only traces: keep JAX (and libtpu) off any chip this machine may have, so
  # a compile never grabs a TPU another job is using. Both TPU and GPU targets are device-less.
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  logging.getLogger("absl").setLevel(logging.WARNING)
  from bertjax import aot
  reports = aot.compile_steps(cfg, target, step=args.step,
                              mfu=args.mfu if args.mfu is not None else aot.DEFAULT_MFU)
  for r in reports:
    print(aot.format_report(r), flush=True)
  if args.json:
    with open(args.json + ".tmp", "w") as f:
      json.dump([r.as_dict() for r in reports], f, indent=2)
    os.replace(args.json + ".tmp", args.json)
  bad = [r for r in reports if not r.fits]
  if bad:
    raise UserError(aot.not_fit_message(bad[0], cfg))
  return 0
