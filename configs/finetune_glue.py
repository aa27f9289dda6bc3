"""Fine-tune on a GLUE task (SST-2, CoLA, MRPC, RTE, QNLI, MNLI, QQP, STS-B) from a checkpoint.

Run (from the repository root):
  bertjax finetune --config configs/finetune_glue.py --task sst2 \
      --data ../shared/data/glue/SST-2 --init HF_OR_BUNDLE_DIR --workdir runs/sst2

BERT's recipe (Devlin et al. 2019, A.3): AdamW, batch 32, 3 epochs, 10% warmup, lr from
{2e-5, 3e-5, 5e-5}; sequences of 128 tokens. Things to try:
  --config.optim.learning_rate=1e-4     small models (MiniLM, bert-mini) like higher rates
  --config.finetune.max_seq_length=64   SST-2's sentences fit: half the compute
  --config.model.dtype=bfloat16         bf16 compute, f32 master weights
"""
from bertjax.tasks.finetune import default_config


def get_config():
  c = default_config()
  c.finetune.max_seq_length = 128
  c.finetune.num_epochs = 3.0
  c.optim.learning_rate = 2e-5
  c.train.global_batch_size = 32
  return c
