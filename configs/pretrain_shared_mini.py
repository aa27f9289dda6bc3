"""BERT-Mini pretrained on ../shared/data/corpus: the checkpoint of the transfer experiment.

The transfer rows of docs/results.md fine-tune this model on SST-2 and compare it with the
same architecture from random initialisation (benchmarks/transfer_sst2.py, since
superseded by benchmarks/transfer.py). Run:
  bertjax tokenizer train --input "$S/nltk_gutenberg/*.txt,$S/nltk_inaugural/*.txt,\
$S/nltk_state_union/*.txt,$S/wikitext-2/*.tokens,$S/bert_sample_text/*.txt" \
      --out runs/transfer/spm16k --vocab-size 16000          # S=../shared/data/corpus
  bertjax pretrain --config configs/pretrain_shared_mini.py --workdir runs/transfer/pretrain

Budget: L=4/H=256 (BERT-Mini), S=128, batch 32, 3,000 steps (96k sequences, ~12M tokens seen,
a little under one pass over the 15.7 MB corpus twice masked), bf16 compute; ~25-40 CPU
minutes on the 2-core machine. BERT's recipe otherwise (AdamW, linear warmup and decay).
"""
from bertjax.config import base_config, model_config

S = "../shared/data/corpus"


def get_config():
  c = base_config()
  c.model = model_config("mini", max_position_embeddings=128)
  c.model.dtype = "bfloat16"
  c.data.corpus = ",".join([f"{S}/nltk_gutenberg/*.txt", f"{S}/nltk_inaugural/*.txt",
                            f"{S}/nltk_state_union/*.txt", f"{S}/wikitext-2/*.tokens",
                            f"{S}/bert_sample_text/*.txt"])
  c.data.tokenizer = "runs/transfer/spm16k.model"
  c.data.max_seq_length = 128
  c.data.max_predictions_per_seq = 20
  c.data.heldout_fraction = 0.02
  c.optim.learning_rate = 7e-4
  c.optim.warmup_steps = 200
  c.train.global_batch_size = 32
  c.train.num_steps = 3000
  c.train.log_every = 50
  c.train.eval_every = 1000
  c.train.eval_batches = 8
  c.checkpoint.every_steps = 500
  return c
