"""BERT pretraining at one of six sizes, the original BERT recipe.

Run (SIZE: tiny, mini, small, medium, base, large; no :SIZE = base):
  bertjax pretrain --config configs/bert.py:base --workdir runs/base
  bertjax pretrain --config configs/bert.py:tiny --workdir runs/tiny

Recipe (Devlin et al. 2019; Turc et al. 2019 showed the same recipe works at every size):
batch 256, 1M steps, 10k warmup then linear decay, AdamW (wd 0.01); 90% of the steps at
S=128 / P=20, the last 10% at S=512 / P=80. The sizes differ in the architecture
(bertjax.config.MODEL_SIZES) and the peak learning rate (SIZES below).
Data and tokenizer default to base_config(); point them elsewhere with e.g.
  --config.data.corpus='data/corpus/*.txt' --config.data.tokenizer=data/tokenizer/spm.model
and shrink for a quick look with --config.train.num_steps=100 --config.train.global_batch_size=32.
"""
from bertjax.config import base_config, model_config
from bertjax.errors import UserError

# size -> (peak learning rate, where it comes from). Architectures: bertjax.config.MODEL_SIZES.
SIZES = {
    "tiny": (0.001, "BERT-Tiny, L=2 H=128 A=2, 4.4M params: a narrow model trains stably at a "
                    "10x higher peak rate"),
    "mini": (0.0005, "BERT-Mini, L=4 H=256 A=4, 11M params: ELECTRA-Small's rate for H=256"),
    "small": (0.0003, "BERT-Small, L=4 H=512 A=8, 29M params: between Mini and Base"),
    "medium": (0.0002, "BERT-Medium, L=8 H=512 A=8, 41M params: between Mini and Base"),
    "base": (0.0001, "BERT-Base, L=12 H=768 A=12, 110M params: Devlin et al. 2019"),
    "large": (0.0001, "BERT-Large, L=24 H=1024 A=16, 340M params: Devlin et al. 2019"),
}


def get_config(arg=None):
  size = arg or "base"
  if size not in SIZES:
    raise UserError(f"configs/bert.py:{size}: unknown size; use one of {', '.join(SIZES)}")
  c = base_config()
  c.model = model_config(size)
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.optim.name = "adamw"
  c.optim.learning_rate = SIZES[size][0]
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
