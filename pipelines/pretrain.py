"""Pretrain BERT (MLM + NSP): a thin wrapper over `bertjax pretrain`.

  python pipelines/pretrain.py --config configs/pretrain_demo.py --workdir runs/demo \
      [--config.train.num_steps=3000 ...]

The logic lives in bertjax.data (pairs and masks on the fly), bertjax.train (the one trainer)
and bertjax.checkpoint; this script only forwards its flags.
"""
import sys

from bertjax.cli import main

if __name__ == "__main__":
  sys.exit(main(["pretrain"] + sys.argv[1:]))
