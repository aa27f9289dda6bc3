"""The from-scratch encoder of the transfer protocol's second version (docs/transfer_protocol.md,
"Protocol 2", issue #18).

The demo recipe as it stands (configs/pretrain_demo.py: MLM only, packing, 30% masking, no
dropout, WSD, bf16 where fast, tiny L=2/H=128, the shipped 8,000-piece tokenizer, and short rows
first: S=16 x 256 rows for the first quarter of the steps, then S=128 x 32) with only what
protocol 1 changed: the corpus (../shared/data/corpus plus SST-2 train's sentences minus the
learning-rate selection slice, written by benchmarks/transfer.py), 40 minutes of train steps, a
1% held-out split and eval / checkpoint cadence for that length.
  .venv/bin/python -m benchmarks.transfer --protocol 2 --stages pretrain
"""
import os

from bertjax.config import config_module

_HERE = os.path.dirname(os.path.abspath(__file__))
_V1 = config_module(os.path.join(_HERE, "transfer_pretrain.py"))
corpus_spec = _V1.corpus_spec   # the runner builds data.corpus with it


def get_config():
  c = config_module(os.path.join(_HERE, "pretrain_demo.py")).get_config()
  c.data.corpus = corpus_spec(_V1.S, "runs/transfer-v2/data/" + os.path.basename(_V1.SST2_TEXT))
  c.data.heldout_fraction = 0.01
  c.train.budget_minutes = 40
  c.train.eval_every = 2000
  c.checkpoint.every_steps = 1000
  return c
