"""Token classification on CoNLL-2003-style column files: NER (default) or POS tagging.

Run (a folder with eng.train / eng.testa / eng.testb, or train.txt / valid.txt / test.txt):
  bertjax finetune --config configs/finetune_conll.py --task conll2003 --data CONLL_DIR \
      --init HF_OR_BUNDLE_DIR --workdir runs/ner
POS tags from the same files (the second column), scored by token accuracy:
  bertjax finetune --config configs/finetune_conll.py --task pos --data CONLL_DIR \
      --init HF_OR_BUNDLE_DIR --workdir runs/pos

Tags are used as written (IOB1 as CoNLL-2003 is released, or IOB2); each word's label sits on its
first sub-token; entity-level micro F1 follows conlleval's chunk rules. Predictions:
WORKDIR/predictions/conll2003_dev.conll (`word gold predicted`, conlleval's input).
"""
from bertjax.tasks.finetune import default_config


def get_config():
  c = default_config()
  c.finetune.max_seq_length = 128
  c.finetune.num_epochs = 3.0
  c.optim.learning_rate = 5e-5
  c.train.global_batch_size = 32
  return c
