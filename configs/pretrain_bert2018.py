"""BERT-2018's recipe on the bundled corpus (the main job's before the MLM-only recipe of
configs/pretrain_demo.py): NSP + MLM segment pairs, 15% masking, dropout 0.1, fp32, linear decay,
a fixed number of steps. Kept as the reference the new recipe is compared with, and as the base of
the tests that need BERT-2018's behaviour.

Run (from the repository root; a few CPU minutes):
  bertjax pretrain --config configs/pretrain_bert2018.py --workdir runs/bert2018

Data: data/corpus/*.txt (public-domain Gutenberg books, inaugural and State of the Union
addresses; provenance in data/corpus/PROVENANCE.md) with the shipped SentencePiece tokenizer
data/tokenizer/spm.model (8,000 pieces; model.vocab_size is taken from it).
Model: L=2, H=128, N=2 ("tiny"), max 256 positions. Two phases as BERT: S=128 / P=20, then the
last 40 steps at S=256 / P=40 (BERT's S=512 tail, shrunk to fit a CPU demo).
Ends with a summary: held-out MLM / NSP accuracy, the checkpoint and WORKDIR/export (a bundle
for `bertjax finetune --init-from`). Things to try:
  --config.train.num_steps=3000      longer: MLM accuracy keeps climbing
  --config.model.dtype=bfloat16      bf16 compute, f32 master weights
  --config.train.grad_accum_steps=4  same update, a quarter of the activation memory
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("tiny", max_position_embeddings=256)
  c.data.corpus = "data/corpus/*.txt"
  c.data.tokenizer = "data/tokenizer/spm.model"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.data.heldout_fraction = 0.06         # 8 of the 127 documents (~38k tokens) for evaluation
  c.optim.learning_rate = 1e-3           # small models take (and need) a high peak lr
  c.optim.warmup_steps = 60
  c.train.global_batch_size = 32
  c.train.num_steps = 600
  c.train.phase2_start = 560             # the last 40 steps at S=256
  c.train.phase2_max_seq_length = 256
  c.train.phase2_max_predictions_per_seq = 40
  c.train.log_every = 20
  c.train.eval_every = 200
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 200
  return c
