"""BERT-Mini (L=4, H=256, A=4, 11M params) pretraining, the original BERT recipe.

Run:
  bertjax pretrain --config configs/bert_mini.py --workdir runs/mini

Recipe (Devlin et al. 2019; Turc et al. 2019 showed the same recipe works at every size):
batch 256, 1M steps, 10k warmup then linear decay, AdamW (wd 0.01); 90% of the steps at
S=128 / P=20, the last 10% at S=512 / P=80. Peak lr 0.0005 (ELECTRA-Small's rate for H=256).
Data and tokenizer default to base_config(); point them elsewhere with e.g.
  --config.data.corpus='data/corpus/*.txt' --config.data.tokenizer=data/tokenizer/spm.model
and shrink for a quick look with --config.train.num_steps=100 --config.train.global_batch_size=32.
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("mini")
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.name = "adamw"
  c.optim.learning_rate = 0.0005
  c.optim.warmup_steps = 10_000
  c.optim.schedule = "linear"
  c.optim.weight_decay = 0.01
  c.train.global_batch_size = 256
  c.train.num_steps = 1_000_000
  c.train.phase2_start = 900_000          # last 10% of steps at S=512 (learns positions 128..511)
  c.train.phase2_max_seq_length = 512
  c.train.phase2_max_predictions_per_seq = 80
  c.train.log_every = 100
  c.train.eval_every = 10_000
  c.checkpoint.every_steps = 10_000
  return c
