"""Fine-tune extractive QA on SQuAD v1.1 (doc-stride windows, n-best span decoding).

Run (a folder with train-v1.1.json and dev-v1.1.json):
  bertjax finetune --config configs/finetune_squad.py --task squad --data SQUAD_DIR \
      --init HF_OR_BUNDLE_DIR --workdir runs/squad
With only the dev file (../shared/data/squad), split it by article, 40 to train and 8 to evaluate:
  bertjax finetune --config configs/finetune_squad.py --task squad --data ../shared/data/squad \
      --init HF_OR_BUNDLE_DIR --workdir runs/squad_split --config.finetune.article_split=40

BERT's SQuAD recipe: lr 3e-5, batch 32, 2 epochs, S=384, doc stride 128, query <= 64 tokens,
n-best 20, answers <= 30 tokens. Writes WORKDIR/predictions/squad_dev_predictions.json (the
official {id: answer} format) and reports EM/F1 with the official v1.1 normalisation.
"""
from bertjax.tasks.finetune import default_config


def get_config():
  c = default_config()
  c.finetune.max_seq_length = 384
  c.finetune.doc_stride = 128
  c.finetune.max_query_length = 64
  c.finetune.n_best = 20
  c.finetune.max_answer_length = 30
  c.finetune.num_epochs = 2.0
  c.optim.learning_rate = 3e-5
  c.train.global_batch_size = 32
  return c
