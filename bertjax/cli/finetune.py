"""`bertjax finetune`: flags -> config -> bertjax.tasks.finetune.run (the one trainer)."""
from __future__ import annotations

import json

from bertjax.cli.common import parser, split_overrides, start_runtime

FINETUNE_HELP = """\
Fine-tune a pretrained BERT on a registered task, evaluate on the dev split during and after
training, and write predictions (GLUE-style TSV, SQuAD predictions JSON, CoNLL columns) to
WORKDIR/predictions/ and the dev metrics to WORKDIR/eval_results.json.

  bertjax finetune --task sst2 --data ../shared/data/glue/SST-2 --init HF_OR_BUNDLE_DIR \\
      --workdir runs/sst2 --config.optim.learning_rate=3e-5 --config.finetune.num_epochs=2

--init is a bertjax export (`bertjax export`) or a Hugging Face BERT directory; its own
tokenizer is used. Without --init the encoder starts from random weights (model.* and
data.tokenizer from the config). Tasks: {tasks}.
Multi-host: the same command on every host with --coordinator HOST:PORT --num-processes N
--process-id I (or let JAX detect a TPU pod / SLURM job); process 0 writes the predictions.
Defaults: BERT's recipe (AdamW 2e-5, batch 32, 3 epochs, 10% warmup); --config FILE starts
from a config file instead (configs/finetune_*.py); --config.KEY=VALUE overrides any field.

Optimizer defaults beside transformers' Trainer (4.57), each chosen on purpose:
  optim.eps           1e-6  BERT's (Trainer and torch AdamW: 1e-8); it matters only for
                            weights whose gradients are ~1e-6 or smaller: it damps their steps
  optim.clip_norm     1.0   global-norm clipping, as Trainer's max_grad_norm=1.0 (0 = off; a
                            plain PyTorch loop without clip_grad_norm_ does not clip)
  optim.weight_decay  0.01  BERT's (Trainer: 0.0); never on biases or LayerNorm scales, the same
                            mask as Trainer's when it decays
  finetune.warmup_proportion 0.1  BERT's (Trainer: warmup_ratio 0); lr 2e-5 (Trainer: 5e-5)
Trainer's recipe: --config.optim.eps=1e-8 --config.optim.weight_decay=0
  --config.finetune.warmup_proportion=0 --config.optim.learning_rate=5e-5
"""


def finetune_main(argv: list[str]) -> int:
  from bertjax.tasks import registry
  p = parser("bertjax finetune", FINETUNE_HELP.format(tasks=", ".join(registry.names())))
  p.add_argument("--task", default="", help="registered task name (see above)")
  p.add_argument("--data", default="", help="folder with the task's train/dev(/test) files")
  p.add_argument("--init", "--init-from", dest="init", default="",
                 help="bertjax bundle or Hugging Face BERT directory")
  p.add_argument("--workdir", required=True, help="checkpoints, metrics.jsonl, predictions/")
  p.add_argument("--config", default="", help="config file (default: BERT's fine-tuning recipe)")
  p.add_argument("--no-progress", action="store_true", help="no progress bar")
  from bertjax import distributed
  distributed.add_flags(p)
  args, rest = p.parse_known_args(argv)
  overrides = split_overrides(rest, "finetune")

  from bertjax.config import apply_overrides, load_config
  if args.config:
    cfg = load_config(args.config, overrides)
  else:
    from bertjax.tasks.finetune import default_config
    cfg = apply_overrides(default_config(), overrides)
  for field, value in (("task", args.task), ("data", args.data), ("init", args.init)):
    if value:
      cfg.finetune[field] = value
  start_runtime(args)

  from bertjax.tasks.finetune import run
  summary = run(cfg, args.workdir, progress=not args.no_progress,
                command=["bertjax", "finetune"] + list(argv))
  print(json.dumps({"task": summary["task"], "steps": summary["steps"],
                    "wall_s": round(summary["wall_s"], 1), "eval": summary.get("results"),
                    "predictions": summary.get("predictions")}, indent=1))
  return 0

