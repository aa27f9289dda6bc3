"""The README's main job (`make pretrain`): a small BERT pretrained on the bundled corpus on CPU.

Run (from the repository root; a few CPU minutes):
  bertjax pretrain --config configs/pretrain_demo.py --workdir runs/demo

Data: data/corpus/*.txt (public-domain Gutenberg books, inaugural and State of the Union
addresses; provenance in data/corpus/PROVENANCE.md) with the shipped SentencePiece tokenizer
data/tokenizer/spm.model (8,000 pieces; model.vocab_size is taken from it).
Model: L=2, H=128, N=2 ("tiny"), max 128 positions. Batches of 4,096 tokens: 256 rows of 16
tokens for the first quarter of the steps, then 32 rows of 128 (a sequence-length curriculum).
Recipe (chosen from the short runs in docs/pretrain_recipe.md; BERT-2018's differs in NSP, dropout
0.1, 15% masking, fp32 and a linear schedule):
  MLM only (no NSP), rows packed to full length from the document stream (RoBERTa), attention
  kept within each document; 30% masking (Wettig et al. 2023); no dropout, so attention runs
  through jax.nn.dot_product_attention (cramming); bf16 compute where it is fast (model.dtype=
  auto), f32 master weights;
  warmup-stable-decay learning rate; short rows first (train.phase2_fraction).
Ends with a summary: held-out MLM accuracy (scored at 15% masking) beside the most-frequent-token
baseline on the same held-out text, the checkpoint and WORKDIR/export (a bundle for
`bertjax finetune --init-from`). Things to try:
  --config.train.budget_minutes=15     longer: MLM accuracy keeps climbing (kept on resume)
  --config.train.budget_minutes=0 --config.train.num_steps=1200   a fixed number of steps
  --config.data.masked_lm_prob_end=0.05  lower the masking rate over training (mmBERT)
  --config.train.phase2_fraction=0 --config.data.max_seq_length=128 --config.train.global_batch_size=32
                                       one phase at S=128 (stays on the unigram plateau here)
  configs/pretrain_bert2018.py         BERT-2018's recipe: segment pairs + next-sentence prediction
"""
from bertjax.config import base_config, model_config


def get_config():
  c = base_config()
  c.model = model_config("tiny", max_position_embeddings=128)
  c.model.hidden_dropout_prob = 0.0      # cramming: no dropout in short pretraining runs
  c.model.attention_probs_dropout_prob = 0.0
  # f32 master weights; bf16 matmuls where the machine runs them faster (TPU, GPU, AMX or
  # AVX512-BF16 CPUs: the step is 1.7x faster on a Zen 4 EPYC), f32 on AVX2-only CPUs.
  c.model.dtype = "auto"
  c.data.corpus = "data/corpus/*.txt"
  c.data.tokenizer = "data/tokenizer/spm.model"
  c.data.objective = "mlm"
  # Short rows first: phase 1 trains on S=16 rows (256 of them, the same 4,096 tokens a step)
  # for the first quarter of the steps, then S=128. On 128-token rows from the start the tiny
  # model stays on the unigram plateau (held-out 0.152, 0.055 at [MASK], after 1,232 steps); on
  # 16-token rows attention finds the neighbouring tokens within ~100 steps and keeps using them
  # at S=128: 0.288 (0.215 at [MASK]) after the same 1,232 steps (docs/pretrain_recipe.md).
  c.data.max_seq_length = 16
  c.train.global_batch_size = 256
  c.data.masked_lm_prob = 0.3
  c.data.max_predictions_per_seq = 0     # derived: ceil(0.3 x 16) = 5
  c.train.phase2_fraction = 0.25
  c.train.phase2_max_seq_length = 128
  c.train.phase2_global_batch_size = 32
  c.train.phase2_max_predictions_per_seq = 39   # ceil(0.3 x 128)
  c.data.heldout_fraction = 0.06         # 7 of the 127 documents (~32k tokens) for evaluation
  # lr: at step 200 (of 600), held-out MLM accuracy 0.040 with 3e-3 / warmup 6% (a loss spike
  # after the warmup sent it back to the unigram plateau), 0.075 with 1e-3 / warmup 10%, 0.095
  # with 2e-3 / warmup 15% (docs/pretrain_recipe.md).
  c.optim.learning_rate = 2e-3
  c.optim.schedule = "wsd"
  c.optim.warmup_fraction = 0.15
  c.optim.decay_fraction = 0.3
  # 4.5 minutes of train steps (num_steps is resolved from a measured step time and kept in
  # WORKDIR/budget.json); set --config.train.budget_minutes=0 to use train.num_steps instead.
  c.train.budget_minutes = 4.5
  c.train.num_steps = 1200
  c.train.log_every = 50
  c.train.eval_every = 400
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 400
  return c
